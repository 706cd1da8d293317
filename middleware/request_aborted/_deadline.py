"""Deadline headers: how a caller tells the next service how long it has left.

Two wire formats are common. gRPC's ``grpc-timeout`` is an integer of at most eight digits and a
unit letter (``H``, ``M``, ``S``, ``m``, ``u``, ``n``); Envoy-style headers such as
``x-envoy-expected-rq-timeout-ms`` carry whole milliseconds. An inbound header may only shorten a
request's budget, and a malformed one is ignored: a bad header from a client must never cost a 500.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Final, Literal

__all__ = [
    "DEFAULT_DEADLINE_HEADER",
    "DeadlineHeader",
    "format_grpc_timeout",
    "format_milliseconds",
    "parse_grpc_timeout",
    "parse_milliseconds",
]

_GRPC_UNITS: Final = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
_GRPC_MAX: Final = 99_999_999
_MILLISECONDS: Final = re.compile(r"[0-9]{1,15}(?:\.[0-9]{1,9})?")
# HTTP's optional whitespace around a field value is space and tab (RFC 9110 5.6.3). str.strip()
# with no argument also removes Unicode spaces (NBSP, U+2028...), which no proxy sends: a value
# wrapped in them is malformed, not a budget.
_OWS: Final = " \t"


def parse_grpc_timeout(value: str) -> float | None:
    """Seconds from a ``grpc-timeout`` value such as ``"250m"``; ``None`` when malformed."""
    value = value.strip(_OWS)
    digits, unit = value[:-1], value[-1:]
    if not (1 <= len(digits) <= 8 and digits.isascii() and digits.isdigit()):
        return None
    scale = _GRPC_UNITS.get(unit)
    return None if scale is None else int(digits) * scale


def format_grpc_timeout(seconds: float) -> str:
    """The shortest exact-or-rounded-up ``grpc-timeout`` value for ``seconds``."""
    seconds = max(0.0, seconds)
    for unit, scale in (("m", 1e-3), ("S", 1.0), ("M", 60.0), ("H", 3600.0)):
        # 4.001 / 1e-3 is 4001.0000000000005 in binary floating point: ignore a few ulps of
        # noise, or whole milliseconds would come out one too high.
        scaled = seconds / scale
        amount = math.ceil(scaled - 4 * math.ulp(scaled))
        if amount <= _GRPC_MAX:
            return f"{amount}{unit}"
    return f"{_GRPC_MAX}H"


def parse_milliseconds(value: str) -> float | None:
    """Seconds from a whole or decimal number of milliseconds; ``None`` when malformed.

    Only plain ASCII digits with an optional fraction, between optional spaces and tabs:
    ``float()`` would also take ``1e3``, ``1_000``, ``inf``, Arabic-Indic digits or a no-break
    space around the number, none of which a proxy sends.
    """
    value = value.strip(_OWS)
    if _MILLISECONDS.fullmatch(value) is None:
        return None
    return float(value) / 1000.0


def format_milliseconds(seconds: float) -> str:
    """Whole milliseconds, rounded down so the receiver never gets more time than is left."""
    # 1.001 * 1000 is 1000.9999999999999 in binary floating point: ignore a few ulps of noise,
    # or whole milliseconds would come out one too low.
    milliseconds = seconds * 1000.0
    return str(max(0, math.floor(milliseconds + 4 * math.ulp(milliseconds))))


@dataclass(frozen=True, slots=True)
class DeadlineHeader:
    """A header that carries the remaining budget, and its wire format.

    ``DeadlineHeader.of("grpc-timeout")`` picks the gRPC format; any other name means milliseconds.
    """

    name: str
    format: Literal["ms", "grpc"] = "ms"

    @classmethod
    def of(cls, header: str | DeadlineHeader) -> DeadlineHeader:
        if isinstance(header, DeadlineHeader):
            return header
        name = header.lower()
        return cls(name, "grpc" if name == "grpc-timeout" else "ms")

    def parse(self, value: str) -> float | None:
        """Seconds from a header value, or ``None`` when it is malformed."""
        return parse_grpc_timeout(value) if self.format == "grpc" else parse_milliseconds(value)

    def render(self, seconds: float) -> str:
        """The header value for ``seconds`` left."""
        if self.format == "grpc":
            return format_grpc_timeout(seconds)
        return format_milliseconds(seconds)


DEFAULT_DEADLINE_HEADER: Final = DeadlineHeader("x-request-timeout-ms")
