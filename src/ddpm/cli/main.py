"""``ddpm`` command line: the parser of every subcommand, and :func:`main`, which turns the library's errors into
one line and an exit status.  Each subcommand lives in its own module (train, sample, evaluate, ema, interop,
edit, serve)."""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from .._version import __version__
from ..data.datasets import DataError
from ..runs.checkpoint import CheckpointError, complete_checkpoints
from ..runtime.distributed import DeviceError, DistributedError
from . import edit, ema, evaluate, interop, sample, serve, train
from .args import add_checkpoint_flag, apply_checkpoint_flag
from .errors import UserError, one_line_warning

__all__ = ["main", "build_parser"]


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's one-line errors: a bad flag or number says which and where to look, without the
    whole usage block (``--help`` still shows it).  Subcommand parsers inherit this class."""

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ddpm", description="Denoising Diffusion Probabilistic Models (Ho, Jain & Abbeel 2020).",
        epilog="examples:\n  ddpm train && ddpm sample runs/digits --chain 8\n  ddpm <command> --help",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"ddpm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    train.register(sub)
    sample.register(sub)
    evaluate.register(sub)
    ema.register(sub)
    interop.register(sub)
    edit.register(sub)
    serve.register(sub)
    add_checkpoint_flag(parser)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    shown_as = warnings.formatwarning
    warnings.formatwarning = one_line_warning
    try:
        apply_checkpoint_flag(args)
        return args.func(args)
    except (DataError, CheckpointError, DeviceError, UserError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except DistributedError as e:  # a lost rank or a timed-out collective
        print(f"error: {e}", file=sys.stderr)
        return 1
    except FloatingPointError as e:  # training diverged; the checkpoints written before are intact
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # a full disk, a path through a file, no permission: every write is atomic
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e}; files written before are intact", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(_interrupted_message(args), file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = shown_as


def _interrupted_message(args) -> str:
    """What Ctrl-C leaves behind: for training, the checkpoint to resume from (or that there is none yet)."""
    if args.command != "train":
        return "interrupted"
    run_dir = args.resume or args.run_dir
    done = complete_checkpoints(Path(run_dir))
    if not done:
        return (f"interrupted before the first checkpoint; nothing to resume: run the same command again to start "
                f"over in {run_dir}")
    return f"interrupted; {done[0]} is intact; resume with: ddpm train --resume {run_dir}"


if __name__ == "__main__":
    sys.exit(main())
