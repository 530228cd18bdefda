"""The commands' replies as frozen dataclasses, decoded in one place. A reply of the wrong shape
(a missing field, a negative count) raises :class:`ReplyError`, never a silently wrong value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence


class ReplyError(ValueError):
    """Redis answered something that is not the command's reply."""


def _ints(what: str, value: Any, length: int) -> list[int]:
    if not isinstance(value, (list, tuple)) or len(value) != length or not all(isinstance(v, int) for v in value):
        raise ReplyError(f"not an {what} reply: {value!r}")
    return list(value)


def _count(what: str, value: int) -> int:
    if value < 0:
        raise ReplyError(f"not an {what} reply: negative count {value}")
    return value


def _flag(what: str, value: int) -> bool:
    if value not in (0, 1):
        raise ReplyError(f"not an {what} reply: flag {value}")
    return value == 1


def _wait(what: str, value: int) -> Optional[int]:
    """``-1``: never."""
    return None if value == -1 else _count(what, value)


@dataclass(frozen=True)
class CheckResult:
    """One bucket after ``RL.CHECK`` (or one row of ``RL.CHECKALL``, or ``RL.PEEK``)."""

    allowed: bool
    #: Whole tokens left after this request.
    remaining: int
    #: When refused: ms until the request would fit (``None``: it never can, its cost is above
    #: the burst); 0 when allowed.
    retry_after_ms: Optional[int]
    #: ms until the bucket is full again.
    reset_after_ms: int
    burst: int

    @classmethod
    def decode(cls, value: Any, what: str = "RL.CHECK") -> CheckResult:
        allowed, remaining, retry, reset, burst = _ints(what, value, 5)
        return cls(_flag(what, allowed), _count(what, remaining), _wait(what, retry), _count(what, reset), _count(what, burst))


@dataclass(frozen=True)
class CheckAllResult:
    """``RL.CHECKALL``: all charged, or (when any refused) none."""

    allowed: bool
    #: The longest wait of the limits that refused (``None``: one never can); 0 when allowed.
    retry_after_ms: Optional[int]
    limits: tuple[CheckResult, ...]

    @classmethod
    def decode(cls, value: Any) -> CheckAllResult:
        what = "RL.CHECKALL"
        if not isinstance(value, (list, tuple)) or len(value) != 3 or not isinstance(value[2], (list, tuple)):
            raise ReplyError(f"not an {what} reply: {value!r}")
        allowed, retry = _ints(what, value[:2], 2)
        rows = tuple(CheckResult.decode(row, what) for row in value[2])
        return cls(_flag(what, allowed), _wait(what, retry), rows)


@dataclass(frozen=True)
class RefundResult:
    """``RL.REFUND``: the bucket after the tokens came back (never above its burst)."""

    remaining: int
    reset_after_ms: int

    @classmethod
    def decode(cls, value: Any) -> RefundResult:
        remaining, reset = _ints("RL.REFUND", value, 2)
        return cls(_count("RL.REFUND", remaining), _count("RL.REFUND", reset))


@dataclass(frozen=True)
class ThrottleResult:
    """``CL.THROTTLE`` (redis-cell's reply): seconds, ``limited`` rather than allowed."""

    limited: bool
    limit: int
    remaining: int
    retry_after_secs: Optional[int]
    reset_after_secs: int

    @classmethod
    def decode(cls, value: Any) -> ThrottleResult:
        what = "CL.THROTTLE"
        limited, limit, remaining, retry, reset = _ints(what, value, 5)
        return cls(_flag(what, limited), _count(what, limit), _count(what, remaining), _wait(what, retry), _count(what, reset))


@dataclass(frozen=True)
class AcquireResult:
    """``RL.ACQUIRE``: a concurrency lease taken (or renewed), or refused."""

    acquired: bool
    in_flight: int
    max: int
    #: 0 when acquired; else ms until a slot frees at the latest.
    retry_after_ms: int

    @classmethod
    def decode(cls, value: Any) -> AcquireResult:
        what = "RL.ACQUIRE"
        acquired, in_flight, most, retry = _ints(what, value, 4)
        return cls(_flag(what, acquired), _count(what, in_flight), _count(what, most), _count(what, retry))


def decode_flag(what: str, value: Any) -> bool:
    """``RL.RELEASE`` / ``RL.RENEW``: 1 if the lease was live."""
    if not isinstance(value, int):
        raise ReplyError(f"not an {what} reply: {value!r}")
    return _flag(what, value)


def decode_count(what: str, value: Any) -> int:
    """``RL.RESET``: how many keys it removed."""
    if not isinstance(value, int):
        raise ReplyError(f"not an {what} reply: {value!r}")
    return _count(what, value)


__all__: Sequence[str] = (
    "AcquireResult",
    "CheckAllResult",
    "CheckResult",
    "RefundResult",
    "ReplyError",
    "ThrottleResult",
)
