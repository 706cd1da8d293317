"""The ``request-aborted`` console script.

Output follows ruff: one ``path:line:col CODE message`` line per finding on stdout, a summary on
stderr, exit status 1 when anything was found, 0 when clean, 2 when the command line was wrong.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from ._runner import check_paths
from .rules import RULES

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help (0) and on usage errors (2)
        return exc.code if isinstance(exc.code, int) else 2
    if args.command == "rules":
        for rule in RULES.values():
            print(f"{rule.code}  {rule.name:32} {rule.summary}")
        return 0
    if args.command != "check":
        parser.print_help(sys.stderr)
        return 2
    try:
        findings = check_paths(args.paths or ["."], select=args.select, ignore=args.ignore)
    except FileNotFoundError as exc:
        print(f"request-aborted: error: {exc.filename}: no such file or directory", file=sys.stderr)
        return 2
    if args.format == "json":
        print(json.dumps([finding.as_dict() for finding in findings], indent=2))
    else:
        for finding in findings:
            print(finding)
        summary = f"Found {len(findings)} finding(s)." if findings else "All checks passed!"
        print(summary, file=sys.stderr)
    return 1 if findings else 0


def _codes(value: str) -> list[str]:
    codes = [code.strip().upper() for code in value.split(",") if code.strip()]
    if not all(code.startswith("RA") for code in codes):
        raise argparse.ArgumentTypeError(f"not a rule code (RA...): {value!r}")
    return codes


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="request-aborted",
        description="Check that cancellation tokens reach the work they should cancel.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    check = commands.add_parser(
        "check",
        help="check Python files for tokens that are dropped, unused or swallowed",
        description="Check Python files (directories are searched for *.py) for dropped, "
        "unused and swallowed cancellation. Suppress a finding with `# noqa: RA101`.",
    )
    check.add_argument("paths", nargs="*", metavar="PATH", help="files or directories (default .)")
    check.add_argument(
        "--format", choices=("text", "json"), default="text", help="output format (default text)"
    )
    check.add_argument(
        "--select",
        type=_codes,
        default=[],
        metavar="CODES",
        help="only report these codes or prefixes, comma-separated (RA101,RA104 or RA1)",
    )
    check.add_argument(
        "--ignore", type=_codes, default=[], metavar="CODES", help="do not report these codes"
    )
    commands.add_parser("rules", help="list the rule codes")
    return parser
