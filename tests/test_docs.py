"""Every `ddpm ...` command written in the README and docs/ still parses: a renamed or dropped flag fails here."""
import re
import shlex
from pathlib import Path

import pytest

from ddpm.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# "ddpm train ...", "python -m ddpm train ...", "torchrun ... -m ddpm train ...", with leading VAR=value allowed
COMMAND = re.compile(r"^(?:[A-Z_]+=\S+\s+)*(?:ddpm|python -m ddpm|torchrun\s.*?-m ddpm)\s+(?P<args>.*)$")


def _documented_commands():
    found = []
    for path in DOCS:
        fenced, held, start = False, "", 0
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if line.lstrip().startswith("```"):
                fenced = not fenced
                continue
            if not (fenced or line.startswith("    ")):  # code blocks only, not commands quoted in prose
                continue
            if line.rstrip().endswith("\\"):             # a command continued on the next line
                held, start = held + line.rstrip()[:-1] + " ", start or n
                continue
            line, n, held, start = held + line, start or n, "", 0
            m = COMMAND.match(line.strip())
            if not m or "..." in line or "$" in line or "<" in line:
                continue
            args = shlex.split(m.group("args"), comments=True)
            found.append(pytest.param(args, id=f"{path.name}:{n}"))
    return found


COMMANDS = _documented_commands()


def test_the_docs_hold_commands_to_check():
    assert len(COMMANDS) >= 20


@pytest.mark.parametrize("args", COMMANDS)
def test_documented_command_parses(args):
    build_parser().parse_args(args)  # argparse exits (SystemExit 2) on an unknown flag or a bad value
