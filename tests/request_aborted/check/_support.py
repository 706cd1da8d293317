"""Running the checker over fixtures and reducing findings to what the specs compare."""

from __future__ import annotations

from pathlib import Path

from request_aborted._check import Finding, check_paths

FIXTURES = Path(__file__).parent / "fixtures"


def check(*names: str | Path, select: str = "") -> list[Finding]:
    """Findings for fixture files or directories (or absolute paths), optionally one code only."""
    return check_paths([FIXTURES / name for name in names], select=[select] if select else [])


def lines(findings: list[Finding]) -> list[tuple[str, int]]:
    return [(finding.code, finding.line) for finding in findings]


def places(findings: list[Finding], root: Path = FIXTURES) -> list[tuple[str, str, int]]:
    return [
        (finding.code, Path(finding.path).relative_to(root).as_posix(), finding.line)
        for finding in findings
    ]
