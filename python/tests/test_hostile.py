"""What a careless or hostile caller, a lost Cluster or a cancelled task does to the front ends:
every case ends in a clear error, the configured answer, or a released slot; never a request
charged twice, a slot held for ever, or an unlimited pass. Real Redis servers, except where a
client must raise what no live server can be made to (a Cluster with every slot uncovered)."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import pytest
import redis
from flask import Flask, send_file

from ml_api_rate_limiter import (
    Admission,
    AsyncRateLimiter,
    AsyncTokenBudget,
    Lease,
    Policy,
    RateLimiter,
    TokenBudget,
    estimate_tokens,
)
from ml_api_rate_limiter.connect import parse_sentinel
from ml_api_rate_limiter.flask import FlaskRateLimiter

from conftest import topology

POLICY = Policy("chat", requests="100/minute", tokens="1000/day")


def slot_is_free(limiter: RateLimiter, key: str) -> bool:
    taken = limiter.acquire(key, 1, 1000, "probe")
    limiter.release(key, "probe")
    return taken.acquired


def test_a_cluster_client_never_resends_on_its_own() -> None:
    for url in topology("RL_TEST_CLUSTERS").values():
        assert RateLimiter.from_url(url).redis.retry.get_retries() == 0
        assert AsyncRateLimiter.from_url(url).redis.retry.get_retries() == 0


class UncoveredCluster:
    """A Cluster client as redis-py leaves it when no node answers for the slot."""

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        raise redis.exceptions.RedisClusterException("All slots are not covered after query all startup_nodes.")


def test_a_cluster_without_nodes_answers_as_on_error_says() -> None:
    limiter = RateLimiter(UncoveredCluster(), backend="module")
    denied = Admission(limiter, Policy("p", requests="1/second")).admit("a")
    assert denied.answer is not None and denied.answer.status == 503
    assert Admission(limiter, Policy("p", requests="1/second"), on_error="allow").admit("a").unlimited


class Interrupted(BaseException):
    pass


def test_a_lease_is_released_whatever_interrupts_the_admission(limiter: RateLimiter) -> None:
    class Failing(RateLimiter):
        def check_all(self, checks: Any) -> Any:
            raise Interrupted()

    failing = Failing(limiter.redis)
    policy = Policy("p", requests="10/second", concurrency=1)
    with pytest.raises(Interrupted):
        Admission(failing, policy).admit("a")
    assert slot_is_free(limiter, policy.lease_key(policy.identity_hash("a")))


def flask_app(limiter: RateLimiter) -> Flask:
    app = Flask(__name__)
    app.config["PROPAGATE_EXCEPTIONS"] = True
    rl = FlaskRateLimiter(app, limiter)

    @app.get("/file")
    @rl.limit(policy=Policy("file", concurrency=1))
    def file() -> Any:
        return send_file(io.BytesIO(b"weights"), mimetype="application/octet-stream")

    @app.get("/boom")
    @rl.limit(policy=Policy("boom", concurrency=1))
    def boom() -> Any:
        raise RuntimeError("the model crashed")

    return app


def test_flask_releases_the_lease_of_a_file_answer_and_of_a_view_that_raised(limiter: RateLimiter) -> None:
    client = flask_app(limiter).test_client()
    for _ in range(3):
        answer = client.get("/file")
        assert answer.status_code == 200 and answer.data == b"weights"
    for _ in range(3):
        with pytest.raises(RuntimeError):
            client.get("/boom")
    for name in ("file", "boom"):
        policy = Policy(name, concurrency=1)
        assert slot_is_free(limiter, policy.lease_key(policy.identity_hash("127.0.0.1")))


def test_two_flask_views_of_one_name_cannot_share_limits_by_accident(limiter: RateLimiter) -> None:
    rl = FlaskRateLimiter(Flask(__name__), limiter)

    def blueprint(limit: str) -> Any:
        def predict() -> str:  # the same name in two blueprints
            return "ok"

        return rl.limit(limit)(predict)

    blueprint("1/second")
    with pytest.raises(ValueError, match="share their limits"):
        blueprint("5/second")


def test_costs_and_counts_that_are_not_counts(limiter: RateLimiter) -> None:
    admission = Admission(limiter, Policy("p", requests="10/second"), on_error="allow")
    for bad in (-1, True, 2.5, "3", None):
        with pytest.raises(ValueError):
            admission.admit("a", cost=bad)  # type: ignore[arg-type]
    huge = admission.admit("a", cost=10**30)
    assert huge.answer is not None and huge.answer.status == 429, "never fits: refused, not let through"
    assert huge.answer.header("x-should-retry") == "false"
    budget = TokenBudget(limiter, POLICY, on_error="allow")
    asked = estimate_tokens({"messages": [], "max_tokens": 10**12, "n": 10**8})
    assert asked == 2**63 - 1
    with pytest.raises(Exception) as refused:
        budget.reserve("b", asked)
    assert getattr(refused.value, "answer").status == 429
    for bad_body in ({"messages": [{"content": [{"type": "text", "text": 5}]}]}, {"n": True}, {"max_tokens": 2.0}):
        with pytest.raises(ValueError):
            estimate_tokens(bad_body)
    for bad_policy in ({"concurrency": True}, {"lease_ms": 1.5}, {"concurrency": 0}):
        with pytest.raises(ValueError):
            Policy("p", requests="1/second", **bad_policy)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Admission(limiter, Policy("p", requests="1/second"), error_retry_after=True)
    with pytest.raises(ValueError):
        Lease(limiter, "rl:{x}:l", True)


def test_a_usage_split_across_byte_chunks_is_read_whole_and_settled_as_soon_as_known(limiter: RateLimiter) -> None:
    budget = TokenBudget(limiter, POLICY)
    with budget.reserve("c", 500) as reservation:
        chunks = [b'data: {"usage": {"total_to', b'kens": 12', b'3}}\n\n', b"data: [DONE]\n\n"]
        assert list(reservation.stream(chunks)) == chunks
    assert reservation.used == 123
    with budget.reserve("d", 500) as reservation:
        for chunk in reservation.stream([{"choices": []}, {"usage": {"total_tokens": 40}}, {"choices": []}]):
            if "usage" in chunk:
                break  # a consumer that stops at the usage chunk
    assert reservation.settled and reservation.used == 40


def test_a_cancelled_asyncio_request_keeps_its_reservation_and_frees_its_slot(url: str) -> None:
    async def run() -> tuple[int, bool]:
        limiter = AsyncRateLimiter.from_url(url)
        budget = AsyncTokenBudget(limiter, Policy("chat", tokens="1000/day", concurrency=1))

        async def request() -> None:
            async with await budget.reserve("e", 300):
                await asyncio.sleep(10)  # the model, still answering when the client goes

        task = asyncio.ensure_future(request())
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        sync = RateLimiter.from_url(url)
        policy = budget.policy
        tokens = next(q for q in policy.quotas if q.unit == "tokens")
        left = sync.peek(policy.key(policy.identity_hash("e"), tokens), tokens.limit).remaining + 1
        free = slot_is_free(sync, policy.lease_key(policy.identity_hash("e")))
        await limiter.close()
        return left, free

    left, free = asyncio.run(run())
    assert left == 700, "the model may have worked: the reservation stays"
    assert free, "the lease was released all the same"


def test_sentinel_urls_as_users_write_them() -> None:
    target = parse_sentinel("rediss+sentinel://:s3cret@[::1]:26380,[::2],host:26381/my%20primary/2?ssl_cert_reqs=none")
    assert target.nodes == [("::1", 26380), ("::2", 26379), ("host", 26381)]
    assert (target.service, target.tls, target.options) == ("my primary", True, {"db": 2, "password": "s3cret"})
    with pytest.raises(ValueError, match="name the service"):
        parse_sentinel("redis+sentinel://host:26379")
