"""Every module's ``__all__`` names exactly its public names, and every name it lists exists.

Read from the source (no import): a module's public names are the functions, classes and variables it binds at
top level (also inside top-level ``if``/``try``/``with`` blocks) whose names do not start with ``_``.  A name a
module imports is not its own, unless it re-exports it on purpose: ``from .x import A as A`` (the explicit
re-export form type checkers know), or any import in a package's ``__init__.py``, which exists to gather names.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
MODULES = sorted(p for p in (SRC / "ddpm").rglob("*.py"))


def _bindings(body: list[ast.stmt], package: bool) -> tuple[set[str], set[str], set[str], list[str] | None]:
    """(names defined, names re-exported, every name bound, __all__ or None) of a module's top-level statements.
    A name bound by an import is not defined here, even where a fallback assigns it (``except ImportError: x = None``).
    """
    defined, exported, imported, names = _statements(body, package)
    return defined - imported, exported, defined | imported, names


def _statements(body: list[ast.stmt], package: bool) -> tuple[set[str], set[str], set[str], list[str] | None]:
    """(names assigned or defined, names re-exported, names imported, __all__ or None)."""
    defined, exported, bound, names = set(), set(), set(), None
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for name in (n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)):
                if name == "__all__":
                    names = list(ast.literal_eval(node.value))
                else:
                    defined.add(name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                name = (alias.asname or alias.name).split(".")[0]
                bound.add(name)
                if package or alias.asname == alias.name:
                    exported.add(name)
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            blocks = [node.body, getattr(node, "orelse", []), getattr(node, "finalbody", [])]
            blocks += [h.body for h in getattr(node, "handlers", [])]
            for block in blocks:
                d, e, b, n = _statements(block, package)
                defined |= d
                exported |= e
                bound |= b
                names = n if n is not None else names
    return defined, exported, bound, names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_all_names_exactly_the_public_names(path):
    defined, exported, bound, names = _bindings(ast.parse(path.read_text()).body, path.name == "__init__.py")
    public = {n for n in defined if not n.startswith("_")}
    where = path.relative_to(SRC)
    if names is None:
        assert not public, f"{where}: defines {sorted(public)} but has no __all__"
        return
    assert len(names) == len(set(names)), f"{where}: __all__ lists a name twice"
    assert not set(names) - bound, f"{where}: __all__ lists {sorted(set(names) - bound)}, which it does not define"
    assert not public - set(names), f"{where}: __all__ leaves out {sorted(public - set(names))}"
    stray = set(names) - public - exported - {"__version__"}
    assert not stray, (f"{where}: __all__ lists {sorted(stray)}, imported from elsewhere; drop them or re-export "
                       f"them as 'from ... import X as X'")


def test_the_reader_sees_what_it_must():
    """The rules above on a made-up module: a stale, a missing and a re-exported name, a definition inside try."""
    source = ("from .a import A as A\nfrom .b import B\ntry:\n    C = 1\nexcept ImportError:\n    pass\n"
              "def d(): pass\n_e = 2\n__all__ = ['A', 'C', 'gone']\n")
    defined, exported, bound, names = _bindings(ast.parse(source).body, package=False)
    assert defined == {"C", "d", "_e"} and exported == {"A"} and bound == {"A", "B", "C", "d", "_e"}
    assert names == ["A", "C", "gone"]
    _, exported, _, _ = _bindings(ast.parse("from .b import B\n").body, package=True)
    assert exported == {"B"}
