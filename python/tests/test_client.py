"""The client against real servers, one per backend, started by the repository's one harness
(see `conftest.py`).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any, Callable

import pytest
import redis

from ml_api_rate_limiter import AsyncRateLimiter, Limit, RateLimiter, ReplyError
from ml_api_rate_limiter.replies import CheckResult

from conftest import admin_client, servers


def test_limits_are_written_as_python_users_know_them() -> None:
    assert Limit.parse("10/minute") == Limit(10, 60, 10)
    assert Limit.parse("10 per minute", burst=20) == Limit(10, 60, 20)
    assert Limit.parse("5/10 seconds") == Limit(5, 10)
    assert Limit.parse("1000/day").window == 86400
    assert Limit.parse("3 per 2 hours") == Limit(3, 7200)
    for bad in ("10", "ten/minute", "10/fortnight", "0/minute", "-1/minute", "10/0 seconds"):
        with pytest.raises(ValueError):
            Limit.parse(bad)
    with pytest.raises(ValueError, match="100 years"):
        Limit(1, 86400 * 365, burst=101)
    with pytest.raises(ValueError):
        Limit(2**63, 1)


def test_each_server_gets_the_backend_it_can_run(limiter: RateLimiter, backend: str) -> None:
    assert limiter.backend is None
    limiter.peek("rl:k", "1/second")  # under `rl:`, the keys the README's ACL allows
    assert limiter.backend == backend


def test_check_peek_refund_and_reset(limiter: RateLimiter) -> None:
    for left in (2, 1, 0):
        r = limiter.check("rl:a", "3/minute")
        assert (r.allowed, r.remaining, r.retry_after_ms, r.burst) == (True, left, 0, 3)
    refused = limiter.check("rl:a", "3/minute")
    assert not refused.allowed and refused.retry_after_ms is not None and 19_000 < refused.retry_after_ms <= 20_000
    assert limiter.check("rl:a", "3/minute", cost=4).retry_after_ms is None, "above the burst: never"
    peek = limiter.peek("rl:a", "3/minute")
    assert not peek.allowed
    back = limiter.refund("rl:a", "3/minute", 2)
    assert back.remaining == 2
    assert limiter.check("rl:a", "3/minute", cost=2).allowed
    assert limiter.reset("rl:a") is True
    assert limiter.reset("rl:a") is False
    assert limiter.peek("rl:a", "3/minute").remaining == 2, "full again: a cost-1 request would leave 2"


def test_several_limits_are_charged_all_or_nothing(limiter: RateLimiter) -> None:
    rpm, tpm = ("rl:{u}:rpm", "10/minute", 1), ("rl:{u}:tpm", "100/minute", 60)
    assert limiter.check_all([rpm, tpm]).allowed
    refused = limiter.check_all([rpm, tpm])
    assert not refused.allowed
    assert [row.allowed for row in refused.limits] == [True, False]
    assert limiter.peek("rl:{u}:rpm", "10/minute").remaining == 8, "the request limit was not charged"


def test_force_goes_into_debt_and_keep_holds_a_reserve(limiter: RateLimiter) -> None:
    forced = limiter.check("rl:f", Limit(2, 60), cost=3, force=True)
    assert forced.allowed and forced.remaining == 0 and forced.reset_after_ms > 60_000
    assert not limiter.check("rl:f", Limit(2, 60)).allowed
    assert limiter.check("rl:k", Limit(10, 60), cost=5, keep=5).allowed
    assert not limiter.check("rl:k", Limit(10, 60), cost=1, keep=5).allowed


def test_throttle_answers_as_redis_cell(limiter: RateLimiter) -> None:
    r = limiter.throttle("rl:t", 2, 10, 60)  # under `rl:`, the keys the README's ACL allows
    assert (r.limited, r.limit, r.remaining, r.retry_after_secs) == (False, 3, 2, None)


def test_concurrency_leases(limiter: RateLimiter) -> None:
    assert limiter.acquire("rl:gpu", 2, 30_000, "a").acquired
    assert limiter.acquire("rl:gpu", 2, 30_000, "b").acquired
    full = limiter.acquire("rl:gpu", 2, 30_000, "c")
    assert (full.acquired, full.in_flight, full.max) == (False, 2, 2) and 0 < full.retry_after_ms <= 30_000
    assert limiter.acquire("rl:gpu", 2, 30_000, "a").in_flight == 2, "a retry renews and counts once"
    assert limiter.renew("rl:gpu", "b", 60_000) is True
    assert limiter.release("rl:gpu", "a") is True
    assert limiter.release("rl:gpu", "a") is False
    assert limiter.acquire("rl:gpu", 2, 30_000, "c").acquired


BadCall = Callable[[RateLimiter, redis.Redis], Any]


def module_error(limiter: RateLimiter, admin: redis.Redis, call: BadCall) -> str:
    with pytest.raises(redis.ResponseError) as caught:
        call(limiter, admin)
    return str(caught.value)


# Each a call of the limiter, after the test's own setup (as the default user: `admin`).
BAD_CALLS: dict[str, BadCall] = {
    "negative cost": lambda l, a: l.check("rl:bad", "3/minute", cost=-1),
    "key of another type": lambda l, a: (a.lpush("rl:list", "x"), l.check("rl:list", "3/minute")),
    "foreign string": lambda l, a: (a.set("rl:text", "hello"), l.check("rl:text", "3/minute")),
    "lease id too long": lambda l, a: l.acquire("rl:gpu", 2, 1000, "x" * 300),
    "lease too long": lambda l, a: l.acquire("rl:gpu", 2, 86_400_001, "a"),
    "keys repeated": lambda l, a: l.check_all([("rl:{x}:a", "1/second", 1), ("rl:{x}:a", "1/second", 1)]),
}


def test_every_backend_refuses_bad_calls_in_the_modules_words() -> None:
    said: dict[str, dict[str, str]] = {}
    for backend, url in servers().items():
        with admin_client(backend) as admin:
            admin.flushall()
            limiter = RateLimiter.from_url(url)
            said[backend] = {name: module_error(limiter, admin, call) for name, call in BAD_CALLS.items()}
            assert admin.get("rl:text") == b"hello", "a refused call changes nothing"
            limiter.close()
    reference = said.get("module") or next(iter(said.values()))
    for backend, errors in said.items():
        assert errors == reference, backend


def test_a_flushed_library_or_script_costs_no_request(limiter: RateLimiter, backend: str, admin: redis.Redis) -> None:
    assert limiter.check("rl:s", "5/minute").remaining == 4
    if backend == "functions":
        admin.function_flush()
    elif backend == "scripts":
        admin.script_flush()
    assert limiter.check("rl:s", "5/minute").remaining == 3, "sent once more after loading: charged once"


def test_threads_sharing_a_budget_never_take_more_than_it_holds(url: str) -> None:
    admitted = []
    lock = threading.Lock()

    def worker() -> None:
        limiter = RateLimiter.from_url(url)
        mine = sum(limiter.check("rl:shared", "50/hour").allowed for _ in range(20))
        with lock:
            admitted.append(mine)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(admitted) == 50


def test_the_asyncio_client_answers_the_same(url: str, backend: str) -> None:
    async def run() -> list[Any]:
        limiter = AsyncRateLimiter.from_url(url)
        results: list[Any] = [await limiter.check("rl:a", "3/minute") for _ in range(4)]
        results.append(await limiter.check_all([("rl:{u}:r", "10/minute", 1), ("rl:{u}:t", "100/minute", 60)]))
        results.append(await limiter.refund("rl:a", "3/minute", 1))
        results.append(await limiter.acquire("rl:gpu", 1, 1000, "a"))
        results.append(await limiter.release("rl:gpu", "a"))
        tasks = await asyncio.gather(*(limiter.check("rl:shared", "7/hour") for _ in range(20)))
        results.append(sum(r.allowed for r in tasks))
        assert limiter.backend == backend
        await limiter.close()
        return results

    results = asyncio.run(run())
    assert [r.allowed for r in results[:4]] == [True, True, True, False]
    assert results[4].allowed and results[5].remaining == 1 and results[6].acquired and results[7] is True
    assert results[8] == 7, "20 concurrent tasks on a budget of 7"


def test_an_unreachable_redis_fails_within_the_timeout() -> None:
    limiter = RateLimiter.from_url("redis://127.0.0.1:9/", timeout=0.2)
    started = time.monotonic()
    with pytest.raises(redis.ConnectionError):
        limiter.check("rl:a", "1/second")
    assert time.monotonic() - started < 2


def test_a_reply_of_the_wrong_shape_is_an_error_not_a_wrong_value() -> None:
    with pytest.raises(ReplyError):
        CheckResult.decode([1, 2, 3])
    with pytest.raises(ReplyError):
        CheckResult.decode([2, 0, 0, 0, 1])
    with pytest.raises(ReplyError):
        CheckResult.decode([1, -5, 0, 0, 1])
