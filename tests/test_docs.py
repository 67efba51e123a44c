"""Every `ddpm ...` and `python benchmarks/NAME.py ...` command written in a code block of the README or docs/
still parses: a renamed or dropped flag fails here."""
import re
import shlex
from pathlib import Path

import pytest

from ddpm.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
ENV = r"^(?:[A-Z_]+=\S+\s+)*"   # leading VAR=value settings
# "ddpm train ...", "python -m ddpm train ...", "torchrun ... -m ddpm train ..."
DDPM = re.compile(ENV + r"(?:ddpm|python -m ddpm|torchrun\s.*?-m ddpm)\s+(?P<args>.*)$")
BENCHMARK = re.compile(ENV + r"python benchmarks/(?P<script>\w+)\.py(?:\s+(?P<args>.*))?$")


def _code_lines(path: Path):
    """(line number, command) of each line in a fenced or indented code block, continued lines joined."""
    fenced, held, start = False, "", 0
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not (fenced or line.startswith("    ")):  # not commands quoted in prose
            continue
        if line.rstrip().endswith("\\"):
            held, start = held + line.rstrip()[:-1] + " ", start or n
            continue
        yield start or n, (held + line).strip()
        held, start = "", 0


def _documented(pattern):
    found = []
    for path in DOCS:
        for n, line in _code_lines(path):
            m = pattern.match(line)
            if m and not any(mark in line for mark in ("...", "$", "<")):  # placeholders are not commands
                found.append(pytest.param(m.groupdict(), shlex.split(m.group("args") or "", comments=True),
                                          id=f"{path.name}:{n}"))
    return found


DDPM_COMMANDS = _documented(DDPM)
BENCHMARK_COMMANDS = _documented(BENCHMARK)


def test_the_docs_hold_commands_to_check():
    assert len(DDPM_COMMANDS) >= 20 and len(BENCHMARK_COMMANDS) >= 10


@pytest.mark.parametrize("match, args", DDPM_COMMANDS)
def test_documented_ddpm_command_parses(match, args):
    build_parser().parse_args(args)  # argparse exits (SystemExit 2) on an unknown flag or a bad value


@pytest.mark.parametrize("match, args", BENCHMARK_COMMANDS)
def test_documented_benchmark_command_parses(match, args, load_benchmark):
    load_benchmark(match["script"]).make_parser().parse_args(args)


def test_make_demo_trains_with_flags_that_parse():
    """The Makefile's TRAIN flags (what make demo trains; benchmarks/main_job.py and time_to_quality.py read them
    from the Makefile) are flags of `ddpm train`."""
    m = re.search(r"^TRAIN \?= (.*)$", (ROOT / "Makefile").read_text(), re.M)
    assert m is not None, "the Makefile sets no TRAIN"
    build_parser().parse_args(["train", *shlex.split(m.group(1))])
