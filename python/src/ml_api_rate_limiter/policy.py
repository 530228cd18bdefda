"""What a web framework asks of the limiter for one request, and the answer it sends back,
without any I/O: shared by the Flask extension, the ASGI middleware, the FastAPI dependency and
the LLM token budget, sync and async alike.

A :class:`Policy` is a named set of limits charged together, all or nothing, in one
``RL.CHECKALL`` (limits counted in requests cost the request's cost, those counted in tokens
the token estimate), and optionally a concurrency limit (a lease per request). Its Redis keys
are the gateway's: ``<prefix>{<identity hash>}:<policy>:<limit>``, one hash tag per caller, so
a caller's limits share a Cluster slot and the one call stays all-or-nothing there too.

The answers are the gateway's: ``RateLimit-Policy`` / ``RateLimit`` (IETF draft-10) and
``X-RateLimit-Limit`` / ``-Remaining`` / ``-Reset`` on every answer a policy covered; a ``429``
with ``Retry-After`` (or ``x-should-retry: false`` when the request can never fit) and a JSON
body naming the limits that refused; a ``503`` with ``Retry-After`` when the limiter cannot be
asked and ``on_error`` is ``deny``.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence, Union

from .limits import Limit, as_limit
from .replies import AcquireResult, CheckAllResult, CheckResult

LimitLike = Union[Limit, str]

#: ``on_error`` values: refuse with ``503``, let the request through unlimited, or raise
#: :class:`LimiterUnavailable` to the application.
ON_ERROR = ("deny", "allow", "raise")

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class LimiterUnavailable(RuntimeError):
    """The limiter could not be asked (Redis down, slow, or refusing the command)."""


class RequestRefused(Exception):
    """The request is refused: :attr:`answer` is what to send (status, headers, JSON body):
    a ``429``, or a ``503`` when the limiter cannot be asked and ``on_error="deny"``."""

    def __init__(self, answer: Answer) -> None:
        super().__init__(answer.body.decode())
        self.answer = answer


class RateLimitExceeded(RequestRefused):
    """Refused by a limit (or a concurrency limit): :attr:`answer` is the ``429``."""


def refused(answer: Answer) -> RequestRefused:
    """The exception that carries ``answer``."""
    return RateLimitExceeded(answer) if answer.status == 429 else RequestRefused(answer)


@dataclass(frozen=True)
class Quota:
    """One limit of a policy: its name (in keys and headers), its rate, and what it counts."""

    name: str
    limit: Limit
    #: ``requests`` (charged the request's cost) or ``tokens`` (charged the token estimate).
    unit: str = "requests"


def _is_int(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _as_list(value: Union[LimitLike, Sequence[LimitLike], None]) -> list[Limit]:
    if value is None:
        return []
    if isinstance(value, (str, Limit)):
        return [as_limit(value)]
    return [as_limit(v) for v in value]


def _named(unit: str, limits: list[Limit]) -> list[Quota]:
    """``requests`` for a single limit; ``requests-60s``, ``requests-3600s`` for several."""
    if len(limits) == 1:
        return [Quota(unit, limits[0], unit)]
    names = [f"{unit}-{q.window}s" for q in limits]
    if len(set(names)) != len(names):
        names = [f"{unit}-{i}" for i in range(len(limits))]
    return [Quota(n, q, unit) for n, q in zip(names, limits)]


@dataclass(frozen=True)
class Policy:
    """``Policy("predict", requests="10/minute")``;
    ``Policy("chat", requests=["10/second", "600/hour"], tokens="90000/minute", concurrency=4)``.

    ``requests`` / ``tokens``: one limit or several (``"10/minute"``, or :class:`Limit` for a
    burst), charged together, all or none. ``concurrency``: at most that many requests of one
    caller in flight (a lease each, ``lease_ms`` long, renewed while the request runs).
    ``prefix`` starts every key; ``hash_secret`` keys the hash of callers' identities (so API
    keys never appear in Redis, and the keys cannot be guessed without it).
    """

    name: str
    requests: Union[LimitLike, Sequence[LimitLike], None] = None
    tokens: Union[LimitLike, Sequence[LimitLike], None] = None
    concurrency: Optional[int] = None
    lease_ms: int = 60_000
    prefix: str = "rl:"
    hash_secret: bytes = b""
    quotas: tuple[Quota, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"a policy name is letters, digits, '-', '_' and '.', not {self.name!r}")
        quotas = _named("requests", _as_list(self.requests)) + _named("tokens", _as_list(self.tokens))
        if self.concurrency is not None and not _is_int(self.concurrency, 1, 1_000_000):
            raise ValueError(f"concurrency must be between 1 and 1000000, not {self.concurrency!r}")
        if not quotas and self.concurrency is None:
            raise ValueError("a policy needs at least one limit: requests=, tokens= or concurrency=")
        if len(quotas) > 64:
            raise ValueError("at most 64 limits in one policy (one all-or-nothing call)")
        if not _is_int(self.lease_ms, 1, 86_400_000):
            raise ValueError(f"lease_ms must be between 1 and 86400000, not {self.lease_ms!r}")
        object.__setattr__(self, "quotas", tuple(quotas))

    def identity_hash(self, identity: str) -> str:
        """The caller's part of the keys: 32 hex digits of a keyed BLAKE2b of ``identity``."""
        digest = hashlib.blake2b(identity.encode("utf-8", "surrogatepass"), digest_size=16, key=self.hash_secret)
        return digest.hexdigest()

    def key(self, identity_hash: str, quota: Quota) -> str:
        return f"{self.prefix}{{{identity_hash}}}:{self.name}:{quota.name}"

    def lease_key(self, identity_hash: str) -> str:
        return f"{self.prefix}{{{identity_hash}}}:{self.name}:concurrent"

    def checks(self, identity_hash: str, cost: int, tokens: int) -> list[tuple[str, Limit, int]]:
        """The ``check_all`` of one request: ``cost`` on request limits, ``tokens`` on token limits."""
        return [(self.key(identity_hash, q), q.limit, tokens if q.unit == "tokens" else cost) for q in self.quotas]

    def item_name(self, quota: Quota) -> str:
        """The name in ``RateLimit-Policy`` / ``RateLimit``: the policy's alone when it has one
        limit, else ``<policy>-<limit>``."""
        return self.name if len(self.quotas) == 1 else f"{self.name}-{quota.name}"


Headers = list[tuple[str, str]]


def _ceil_secs(ms: int) -> int:
    return -(-ms // 1000)


def _t_secs(request_allowed: bool, row: CheckResult) -> int:
    if not (request_allowed or row.allowed) and row.retry_after_ms is not None:
        return max(1, _ceil_secs(row.retry_after_ms))
    return _ceil_secs(row.reset_after_ms)


def rate_limit_headers(policy: Policy, result: CheckAllResult) -> Headers:
    """The headers of every answer under ``policy``, from its ``check_all``."""
    pairs = list(zip(policy.quotas, result.limits))
    if not pairs:
        return []
    items_policy = ", ".join(
        f'"{policy.item_name(q)}";q={q.limit.limit};w={q.limit.window}' + (';qu="tokens"' if q.unit == "tokens" else "")
        for q, _ in pairs
    )
    items = ", ".join(f'"{policy.item_name(q)}";r={row.remaining};t={_t_secs(result.allowed, row)}' for q, row in pairs)
    primary = next((i for i, (q, _) in enumerate(pairs) if q.unit == "requests"), 0)
    quota, row = pairs[primary]
    return [
        ("RateLimit-Policy", items_policy),
        ("RateLimit", items),
        ("X-RateLimit-Limit", str(quota.limit.limit)),
        ("X-RateLimit-Remaining", str(row.remaining)),
        ("X-RateLimit-Reset", str(_ceil_secs(row.reset_after_ms))),
    ]


@dataclass(frozen=True)
class Answer:
    """An answer the framework sends instead of calling the application."""

    status: int
    headers: Headers
    body: bytes

    def header(self, name: str) -> Optional[str]:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


def _json(status: int, headers: Headers, error: Mapping[str, object]) -> Answer:
    body = json.dumps({"error": error}, separators=(",", ":")).encode()
    return Answer(status, [*headers, ("Content-Type", "application/json")], body)


def refusal(policy: Policy, result: CheckAllResult) -> Answer:
    """``429`` for a request a limit refused: ``Retry-After`` (the longest wait of the limits
    that refused, whole seconds rounded up), or ``x-should-retry: false`` when it never fits."""
    headers = rate_limit_headers(policy, result)
    refused = [(q, row) for q, row in zip(policy.quotas, result.limits) if not row.allowed]
    limits = [
        {"policy": policy.name, "name": q.name, "unit": q.unit, "retry_after_ms": row.retry_after_ms}
        for q, row in refused
    ]
    what = ", ".join(f'"{q.name}" ({q.limit.limit} {q.unit} per {q.limit.window} seconds)' for q, _ in refused)
    if result.retry_after_ms is None:
        headers.append(("x-should-retry", "false"))
        message = f'Request can never be admitted by policy "{policy.name}": {what}. Retrying will not help; ask for less.'
        retry_after: Optional[int] = None
    else:
        retry_after = max(1, _ceil_secs(result.retry_after_ms))
        headers.append(("Retry-After", str(retry_after)))
        message = f'Rate limit exceeded: {what} of policy "{policy.name}". Please try again after {retry_after} seconds.'
    error = {"type": "rate_limited", "message": message, "retry_after_seconds": retry_after, "limits": limits}
    return _json(429, headers, error)


def concurrency_answer(policy: str, result: AcquireResult) -> Answer:
    """``429`` for a request over a concurrency limit (``policy``: its name, or the lease's
    key): ``Retry-After`` until a slot frees at the latest (a finishing request frees one
    sooner)."""
    retry_after = max(1, _ceil_secs(result.retry_after_ms))
    error = {
        "type": "rate_limited",
        "message": f'Too many requests in flight: {result.max} at once under "{policy}". '
        f"Please try again after {retry_after} seconds.",
        "retry_after_seconds": retry_after,
        "limits": [{"policy": policy, "name": "concurrent", "unit": "concurrent_requests"}],
    }
    return _json(429, [("Retry-After", str(retry_after))], error)


def unavailable(retry_after_secs: int) -> Answer:
    """``503`` when the limiter cannot be asked and ``on_error`` is ``deny``."""
    error = {"type": "rate_limiter_unavailable", "message": "The rate limiter is unavailable. Please try again later."}
    return _json(503, [("Retry-After", str(retry_after_secs))], error)


def check_on_error(on_error: str) -> str:
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {', '.join(ON_ERROR)}, not {on_error!r}")
    return on_error
