"""The asyncio client: :class:`AsyncRateLimiter`, the same methods as
:class:`ml_api_rate_limiter.RateLimiter`, awaited, on ``redis.asyncio`` (never blocking the
event loop). The same rules: one command per call, never sent twice once it may have reached
Redis.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import redis
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from .commands import (
    BACKENDS,
    Call,
    check_args,
    checkall_args,
    is_missing_library,
    is_refused,
    is_unknown_command,
    library_source,
    library_version,
    script_source,
)
from .limits import Limit, as_limit
from .replies import (
    AcquireResult,
    CheckAllResult,
    CheckResult,
    RefundResult,
    ThrottleResult,
    decode_count,
    decode_flag,
)

from .client import PROBE_KEY, BackendUnavailable

LimitLike = Union[Limit, str]


def _no_retries() -> Retry:
    return Retry(NoBackoff(), 0)


class AsyncRateLimiter:
    """The limiter's commands on one Redis (or Cluster): ``check``, ``check_all``, ``peek``,
    ``refund``, ``reset``, ``throttle``, ``acquire``, ``release``, ``renew``.

    ``backend``: ``auto`` (the module if loaded, else the Functions library, else the library
    as a script), or one of ``module``, ``functions``, ``scripts``.
    """

    def __init__(self, client: Any, backend: str = "auto", probe_key: str = PROBE_KEY) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
        self.redis = client
        self._choice = backend
        self._backend: Optional[str] = None if backend in ("auto", "functions", "scripts") else backend
        self._sha = ""
        self._probe_key = probe_key
        self._source = library_source()

    @classmethod
    def from_url(cls, url: str, backend: str = "auto", timeout: float = 0.5, **kwargs: Any) -> AsyncRateLimiter:
        """A client for ``redis://``, ``rediss://`` or ``unix://`` URLs; ``redis+cluster://``
        (any node of a Redis Cluster). ``timeout`` bounds every call (connect, send, answer)."""
        options: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout, "retry": _no_retries()}
        options.update(kwargs)
        if url.startswith("redis+cluster://") or url.startswith("rediss+cluster://"):
            plain = url.replace("+cluster", "", 1)
            options.pop("retry", None)
            client: Any = redis.asyncio.RedisCluster.from_url(plain, **options)
        else:
            client = redis.asyncio.Redis.from_url(url, **options)
        return cls(client, backend=backend)

    # --- which commands answer -------------------------------------------------------------

    @property
    def backend(self) -> Optional[str]:
        """``module``, ``functions`` or ``scripts`` once known (after the first call)."""
        return self._backend

    async def _choose(self) -> str:
        if self._choice in ("auto", "module"):
            try:
                await self.redis.execute_command("RL.PEEK", self._probe_key, 1, 1)
                self._backend = "module"
                return "module"
            except redis.ResponseError as e:
                if self._choice == "module" or not is_unknown_command(e):
                    raise
        if self._choice in ("auto", "functions"):
            try:
                await self._install_functions(force=False)
                self._backend = "functions"
                return "functions"
            except BackendUnavailable:
                if self._choice == "functions":
                    raise
        await self._load_script()
        self._backend = "scripts"
        return "scripts"

    async def _install_functions(self, force: bool) -> None:
        ours = library_version(self._source)
        if not force:
            try:
                version = await self.redis.execute_command("FCALL_RO", "rl_version", 0)
                if int(version) >= ours:
                    return
            except redis.ResponseError as e:
                if is_unknown_command(e) or is_refused(e):
                    raise BackendUnavailable(f"Redis Functions cannot be used here: {e}") from e
                if not is_missing_library(e):
                    raise
        try:
            await self.redis.execute_command("FUNCTION", "LOAD", "REPLACE", self._source)
        except redis.ResponseError as e:
            if is_unknown_command(e) or is_refused(e):
                raise BackendUnavailable(f"the ratelimit library cannot be loaded here: {e}") from e
            raise

    async def _load_script(self) -> None:
        sha = await self.redis.script_load(script_source(self._source))
        self._sha = sha.decode() if isinstance(sha, bytes) else str(sha)

    async def _run(self, call: Call) -> Any:
        backend = self._backend or await self._choose()
        try:
            return await self.redis.execute_command(*call.line(backend, self._sha))
        except redis.ResponseError as e:
            # Nothing ran: the script was flushed (a failover, SCRIPT FLUSH) or the library
            # is gone (FUNCTION FLUSH, a new primary without it). Load it and send once more.
            if backend == "module" or not is_missing_library(e):
                raise
            if backend == "scripts":
                await self._load_script()
            else:
                await self._install_functions(force=True)
            return await self.redis.execute_command(*call.line(backend, self._sha))

    # --- the commands ----------------------------------------------------------------------

    async def check(
        self, key: str, limit: LimitLike, cost: int = 1, keep: Optional[int] = None, force: bool = False
    ) -> CheckResult:
        """``RL.CHECK``: takes ``cost`` tokens if they are there (``force``: whatever is left,
        a debt bounded at one burst; ``keep``: only if ``keep`` tokens remain after)."""
        q = as_limit(limit)
        args = check_args(q.limit, q.window, cost, q.burst, keep, force)
        return CheckResult.decode(await self._run(Call("RL.CHECK", (key,), args)))

    async def check_all(self, checks: Sequence[tuple[str, LimitLike, int]]) -> CheckAllResult:
        """``RL.CHECKALL``: ``(key, limit, cost)`` for each limit, all charged or none. On a
        Cluster the keys must share a hash slot (``rl:{user42}:rpm``, ``rl:{user42}:tpm``)."""
        specs = [(q.limit, q.window, cost, q.burst) for q, cost in ((as_limit(l), c) for _, l, c in checks)]
        keys = tuple(key for key, _, _ in checks)
        return CheckAllResult.decode(await self._run(Call("RL.CHECKALL", keys, checkall_args(specs))))

    async def peek(self, key: str, limit: LimitLike) -> CheckResult:
        """``RL.PEEK``: what a request of cost 1 would get, taking nothing."""
        q = as_limit(limit)
        return CheckResult.decode(await self._run(Call("RL.PEEK", (key,), (q.limit, q.window, "BURST", q.burst))), "RL.PEEK")

    async def refund(self, key: str, limit: LimitLike, amount: int) -> RefundResult:
        """``RL.REFUND``: gives ``amount`` tokens back, never above the burst."""
        q = as_limit(limit)
        return RefundResult.decode(await self._run(Call("RL.REFUND", (key,), (q.limit, q.window, amount, "BURST", q.burst))))

    async def reset(self, key: str) -> bool:
        """``RL.RESET``: forgets the bucket (it is full again); ``True`` if a key was removed."""
        return decode_count("RL.RESET", await self._run(Call("RL.RESET", (key,), ()))) > 0

    async def throttle(self, key: str, max_burst: int, count_per_period: int, period: int, quantity: int = 1) -> ThrottleResult:
        """``CL.THROTTLE``: redis-cell's command and reply."""
        args = (max_burst, count_per_period, period, quantity)
        return ThrottleResult.decode(await self._run(Call("CL.THROTTLE", (key,), args)))

    async def acquire(self, key: str, max_in_flight: int, lease_ms: int, lease_id: str) -> AcquireResult:
        """``RL.ACQUIRE``: one of ``max_in_flight`` slots for ``lease_id`` for ``lease_ms``."""
        args = (max_in_flight, lease_ms, "ID", lease_id)
        return AcquireResult.decode(await self._run(Call("RL.ACQUIRE", (key,), args)))

    async def release(self, key: str, lease_id: str) -> bool:
        """``RL.RELEASE``: ``True`` if the lease was live."""
        return decode_flag("RL.RELEASE", await self._run(Call("RL.RELEASE", (key,), (lease_id,))))

    async def renew(self, key: str, lease_id: str, lease_ms: int) -> bool:
        """``RL.RENEW``: the live lease now ends ``lease_ms`` from now; ``False`` if it had ended."""
        return decode_flag("RL.RENEW", await self._run(Call("RL.RENEW", (key,), (lease_id, lease_ms))))

    async def close(self) -> None:
        await self.redis.aclose()
