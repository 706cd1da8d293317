"""Running a bench script as its users do: ``python bench/<script>.py ...`` from the repository."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_script(script: Path, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def output_of(script: Path, *args: str, timeout: float) -> str:
    """The script's standard output; its standard error is the message when it fails."""
    done = run_script(script, *args, timeout=timeout)
    assert done.returncode == 0, done.stderr
    return done.stdout
