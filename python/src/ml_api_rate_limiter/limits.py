"""Limits written the way Python users know them: ``"10/minute"``, ``"100 per hour"``,
``"5/10 seconds"``, with an optional burst: ``Limit.parse("10/minute", burst=20)``.

A limit is a GCRA bucket: ``limit`` tokens per ``window`` seconds, spaced evenly, holding at
most ``burst`` (default: ``limit``). The bounds are the module's: every number an integer from
1 to 2**63 - 1, and a full bucket must refill within 100 years.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_INTEGER = 2**63 - 1
MAX_TOLERANCE_SECONDS = 100 * 365 * 24 * 3600

_UNITS = {
    "s": 1,
    "sec": 1,
    "second": 1,
    "m": 60,
    "min": 60,
    "minute": 60,
    "h": 3600,
    "hour": 3600,
    "d": 86400,
    "day": 86400,
    "week": 7 * 86400,
}

_PATTERN = re.compile(r"^\s*(\d+)\s*(?:/|per)\s*(\d+)?\s*([a-z]+?)s?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Limit:
    """``limit`` tokens per ``window`` seconds, at most ``burst`` at once."""

    limit: int
    window: int
    burst: int = 0

    def __post_init__(self) -> None:
        if self.burst == 0:
            object.__setattr__(self, "burst", self.limit)
        for name in ("limit", "window", "burst"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_INTEGER:
                raise ValueError(f"{name} must be an integer between 1 and {MAX_INTEGER}, not {value!r}")
        # burst * window / limit: the time a full bucket takes to refill.
        if self.burst * self.window > MAX_TOLERANCE_SECONDS * self.limit:
            raise ValueError("burst * window / limit (the time a full bucket takes to refill) must not exceed 100 years")

    @classmethod
    def parse(cls, text: str, burst: int = 0) -> Limit:
        """``"10/minute"``, ``"10 per minute"``, ``"5/10 seconds"``, ``"1000/day"``."""
        match = _PATTERN.match(text)
        unit = match and _UNITS.get(match.group(3).lower())
        if match is None or unit is None:
            raise ValueError(
                f"{text!r} is not a limit such as '10/minute', '100 per hour' or '5/10 seconds' "
                f"(units: {', '.join(sorted(set(_UNITS)))})"
            )
        count = int(match.group(2) or 1)
        return cls(limit=int(match.group(1)), window=count * unit, burst=burst)

    def __str__(self) -> str:
        text = f"{self.limit}/{self.window}s"
        return text if self.burst == self.limit else f"{text} burst {self.burst}"


def as_limit(value: Limit | str) -> Limit:
    """A :class:`Limit`, from one or from its text."""
    return value if isinstance(value, Limit) else Limit.parse(value)
