"""Run a blocking client call in a thread while the test does something else (send a signal)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


def in_background(call: Callable[[], Any], timeout: float = 20.0) -> Callable[[], Any]:
    """Start ``call`` in a thread; the function returned joins it and gives back its outcome."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def join() -> Any:
        thread.join(timeout)
        if thread.is_alive():
            raise TimeoutError(f"the background call did not finish within {timeout:g}s")
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]

    return join
