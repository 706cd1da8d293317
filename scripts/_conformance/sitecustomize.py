"""Inject into the Python processes a test starts too (on PYTHONPATH in injected runs only).

FastAPI's telemetry tests run their apps in fresh interpreters (``python -m
tests.test_telemetry._subprocess``) that inherit the environment but not pytest's plugins. Here,
once such a process has imported ``starlette.applications`` (and again after
``fastapi.applications``, which imports Starlette first), ``conformance_inject.activate()`` puts
the middleware into its apps as the plugin does in the test processes, and its counts are written
at exit. Nothing is imported before the process imports Starlette itself.
"""

import importlib.abc
import importlib.machinery
import os
import sys
from types import ModuleType
from typing import Any


class _InjectAfterImport(importlib.abc.MetaPathFinder):
    def __init__(self) -> None:
        self.triggers = {"starlette.applications", "fastapi.applications"}

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name not in self.triggers:
            return None
        self.triggers.discard(name)
        if not self.triggers:
            sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_inject(module: ModuleType) -> None:
            exec_module(module)
            plugin = sys.modules.get("conformance_inject")
            if plugin is not None and not hasattr(plugin, "activate"):
                return  # the plugin itself is being imported: pytest activates it
            import conformance_inject

            conformance_inject.activate()

        spec.loader.exec_module = exec_then_inject  # type: ignore[method-assign]
        return spec


if os.environ.get("CONFORMANCE_COUNT_DIR") and "starlette.applications" not in sys.modules:
    sys.meta_path.insert(0, _InjectAfterImport())
