"""``python -m request_aborted._check check PATH...``: the console script without installing."""

from __future__ import annotations

from .cli import main

raise SystemExit(main())
