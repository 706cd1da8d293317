"""Which httpx a client or transport belongs to: httpx (with httpcore) or httpx2 (with httpcore2).

httpx2 is the maintained fork of httpx, with the same API under another import name, and httpcore2
under it with the same pool. The integration works with either, but a response must be built from
the same package as the client that reads it (``Response`` checks its stream against its own
``AsyncByteStream``), and an aborted socket must raise the errors of the httpcore in use (its
transport maps only its own to httpx errors). So everything package-specific is looked up here,
from the objects the caller hands over; nothing imports httpx or httpx2 before a caller uses it.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from types import ModuleType
from typing import Final

__all__ = ["CORE_OF", "PREFERENCE", "Flavour", "default_module", "flavour_of", "module_of"]

PREFERENCE: Final = ("httpx2", "httpx")
"""When nothing says which: httpx2 first, the choice Starlette 1.10's TestClient makes."""

CORE_OF: Final = {"httpx": "httpcore", "httpx2": "httpcore2"}


@dataclass(frozen=True)
class Flavour:
    """One httpx package and the httpcore package under it."""

    httpx: ModuleType
    httpcore: ModuleType

    @classmethod
    def of(cls, module: ModuleType) -> Flavour:
        core = CORE_OF.get(module.__name__)
        if core is None:
            raise ValueError(
                f"module must be httpx or httpx2, got {module.__name__!r}: "
                "pass module=httpx or module=httpx2"
            )
        return cls(module, importlib.import_module(core))


def default_module() -> ModuleType:
    """httpx2 if it is installed, else httpx; ``ImportError`` naming the extras if neither is."""
    for name in PREFERENCE:
        if importlib.util.find_spec(name) is not None:
            return importlib.import_module(name)
    raise ImportError(
        "request_aborted.httpx needs httpx2 or httpx: "
        "pip install 'request-aborted[httpx2]' (or '[httpx]')"
    )


def module_of(obj: object) -> ModuleType | None:
    """The httpx package ``obj``'s class (or one of its bases) comes from, if any."""
    for cls in type(obj).__mro__:
        top = cls.__module__.partition(".")[0]
        if top in CORE_OF:
            return importlib.import_module(top)
    return None


def flavour_of(*objects: object, module: ModuleType | None = None) -> Flavour:
    """``module`` if given, else the package of the first object that has one, else the default."""
    if module is None:
        module = next((m for m in map(module_of, objects) if m is not None), None)
    return Flavour.of(module or default_module())
