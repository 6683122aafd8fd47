"""docs/cli.md's exit codes are the ones the commands return (read from the code's AST)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tykworker.errors import ExitCode

ROOT = Path(__file__).parents[2]
DOC = (ROOT / "docs" / "cli.md").read_text()
PACKAGE = ROOT / "tykworker"
PIPE = 141  # 128 + SIGPIPE: main() ends a command whose output pipe closed


def _codes(node: ast.AST) -> set[int]:
    """Every ``ExitCode.X`` in ``node``, and ``128 + signal.SIGPIPE``."""
    out = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name):
            if sub.value.id == "ExitCode":
                out.add(int(ExitCode[sub.attr]))
            elif sub.value.id == "signal" and sub.attr == "SIGPIPE":
                out.add(PIPE)
    return out


def _function(path: Path, name: str) -> ast.AST:
    tree = ast.parse(path.read_text())
    return next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == name)


def returned_codes() -> dict[str, set[int]]:
    commands = PACKAGE / "cli" / "commands.py"
    common = _codes(_function(commands, "main"))  # usage error, interrupted, pipe closed
    out = {name: common | _codes(_function(commands, f"cmd_{name}")) for name in
           ("serve", "reload", "status", "call")}  # fmt: skip
    out["serve"] |= _codes(ast.parse((PACKAGE / "supervisor" / "pool.py").read_text()))
    out["serve"].discard(PIPE)  # serve prints nothing on stdout
    out["call"] |= _codes(ast.parse((PACKAGE / "cli" / "call.py").read_text()))
    return out


def documented_codes() -> dict[str, set[int]]:
    out: dict[str, set[int]] = {}
    for command, code in re.findall(r"^\| `(\w+)` \| (\d+) \|", DOC, re.M):
        out.setdefault(command, set()).add(int(code))
    return out


def test_every_exit_code_a_command_returns_is_documented_and_no_other():
    assert documented_codes() == returned_codes()


def test_the_defaults_the_doc_states_are_the_parsers():
    from tykworker.cli.commands import _parser

    parser = _parser()
    reload = parser.parse_args(["reload"])
    call = parser.parse_args(["call", "X"])
    assert f"`--wait SECONDS` (default {reload.wait:g})" in DOC
    assert f"within `--wait` seconds (default {reload.wait:g})" in DOC
    assert f"`--timeout SECONDS` (default {call.timeout:g})" in DOC
    assert f"within `--timeout`, default {call.timeout:g} s" in DOC
