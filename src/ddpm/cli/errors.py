"""One-line errors of the ``ddpm`` command: the exception every subcommand raises for a mistake on its command
line, and the checks that refuse bad output folders and step counts before any work."""
from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path

__all__ = ["UserError", "checked", "check_steps", "guidance_flags", "check_guidance_has_classes", "SAMPLING_FLAGS",
           "sampling_errors", "refuse_file_as_folder", "check_out_dir", "one_line_warning"]


class UserError(Exception):
    """A mistake in the command line; printed as one line."""


def check_steps(steps: int | None, run, given: bool = True) -> None:
    """Refuse sampler ``steps`` outside [1, T] of the loaded ``run`` before any sampling starts.  ``given``: the
    user passed them (otherwise they are the sampler's default, and the message says so)."""
    T = run.schedule.num_timesteps
    if steps is not None and not 1 <= steps <= T:
        what = f"got {steps}" if given else f"the sampler's default is {steps}; pass --steps {T} or fewer"
        raise UserError(f"--steps must lie in [1, {T}] (the run's T), {what}")


def guidance_flags(args) -> list[str]:
    """The guidance flags given on a command line, as written (``--guidance W``, ``--guidance-interval LO-HI``):
    both need classes to guide towards, and are refused together where there are none."""
    given = []
    if args.guidance is not None:
        given.append(f"--guidance {args.guidance:g}")
    if args.guidance_interval is not None:
        given.append("--guidance-interval {}-{}".format(*args.guidance_interval))
    return given


def check_guidance_has_classes(given: list[str], run, where) -> None:
    """Refuse the guidance flags ``given`` (:func:`guidance_flags`) for an unconditional run: no class to guide to."""
    if given and run.config.class_names is None:
        raise UserError(f"{given[0]}: {where} is an unconditional run (trained without class labels); drop "
                        f"{given[0].split()[0]}")


#: the flag of each :class:`ddpm.SamplingConfig` field, whose ValueError begins with the field's name
SAMPLING_FLAGS = {"sampler": "--sampler", "steps": "--steps", "spacing": "--spacing", "variance": "--variance",
                  "eta": "--eta", "guidance": "--guidance", "guidance_interval": "--guidance-interval",
                  "clip_denoised": "--no-clip"}


@contextlib.contextmanager
def sampling_errors(where=None):
    """Turn a :class:`ddpm.SamplingConfig` ValueError (made, or filled for a run) into the command line's one-line
    error: its first word, the field at fault, and every ``field=value`` written as the flag (``--field value``)."""
    try:
        yield
    except ValueError as e:
        message = str(e)
        for name in sorted(SAMPLING_FLAGS, key=len, reverse=True):  # guidance_interval before guidance
            message = re.sub(rf"(?<![\w-]){name}=", SAMPLING_FLAGS[name] + " ", message)
            message = re.sub(rf"^{name}(?=[ :])", SAMPLING_FLAGS[name], message)
        raise UserError(f"{where}: {message}" if where else message) from None


def checked(build, where, flags=()):
    """Run a config constructor, turning its validation errors into one-line user errors.  Config field names in
    the message that are also command-line ``flags`` (an argparse namespace's keys) are shown as the flags."""
    try:
        return build()
    except (TypeError, ValueError) as e:
        message = str(e)
        for name in sorted(flags, key=len, reverse=True):  # longest first: ema_decay before a shorter overlap
            # two-word names are unambiguous; of the one-word flags only these appear as field names in messages
            # (a plain word such as "data" or "loss" would be renamed inside ordinary prose)
            if "_" in name or name in ("lr", "steps", "seed"):
                message = re.sub(rf"(?<![\w-]){name}(?!\w)", "--" + name.replace("_", "-"), message)
        raise UserError(f"{where}: {message}" if where else message) from None


def refuse_file_as_folder(path, flag: str) -> None:
    """Refuse an output folder argument that names an existing file, before any work."""
    if path is not None and Path(path).exists() and not Path(path).is_dir():
        raise UserError(f"{flag} {path}: is a file; pass a folder")


def check_out_dir(path, flag: str = "--out") -> Path:
    """Make sure the output folder ``path`` can be written before any work: create it (with its parents) and a
    scratch file in it.  A file in the way, no permission or a read-only disk is one line naming ``flag``."""
    refuse_file_as_folder(path, flag)
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, scratch = tempfile.mkstemp(dir=path, prefix=".write-check-")
        os.close(fd)
        os.unlink(scratch)
    except OSError as e:
        raise UserError(f"{flag} {path}: cannot write there ({e.strerror or e}); "
                         "pass a folder you can write to") from None
    return path


def one_line_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings on the command line read like its errors: one line, no source location."""
    return f"warning: {message}\n"
