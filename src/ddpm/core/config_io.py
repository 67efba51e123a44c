"""Building the config dataclasses from saved JSON (``config.json``) and telling the user what was ignored."""
from __future__ import annotations

import warnings
from dataclasses import fields

__all__ = ["from_known_fields"]


def from_known_fields(cls, d: dict, where: str, extra: tuple[str, ...] = ()):
    """``cls(**d)`` over the dataclass fields of ``cls``; other keys are ignored with a warning naming them and
    ``where`` they sat (a misspelt setting in a hand-edited config must not pass unnoticed), except ``extra``
    keys that are written for reading only."""
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - names - set(extra))
    if unknown:
        warnings.warn(f"{where}: ignoring unknown setting{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}",
                      stacklevel=3)
    return cls(**{k: v for k, v in d.items() if k in names})
