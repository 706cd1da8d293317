"""The token-forwarding checker: ``request-aborted check PATH...``.

A static check, in the spirit of .NET's CA2016, that a request's cancellation token reaches the
work it should stop. It reads source with the standard library's ``ast`` and never imports the
code it checks. Rule codes are listed in :mod:`request_aborted._check.rules`.
"""

from __future__ import annotations

from ._runner import check_paths as check_paths
from ._runner import iter_python_files as iter_python_files
from .rules import RULES as RULES
from .rules import Finding as Finding
from .rules import Rule as Rule

__all__ = ["RULES", "Finding", "Rule", "check_paths", "iter_python_files"]
