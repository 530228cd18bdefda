"""LLM token budgets and leases, driven by the OpenAI SDK against the demo model (OpenAI's chat
completions API), on real Redis servers (every backend)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import openai
import pytest

from ml_api_rate_limiter import (
    AsyncLease,
    AsyncRateLimiter,
    AsyncTokenBudget,
    Lease,
    Policy,
    RateLimiter,
    RateLimitExceeded,
    RequestRefused,
    TokenBudget,
    estimate_tokens,
    usage_of,
)

from conftest import closed_port_url, model_url

POLICY = Policy("chat", requests="100/minute", tokens="1000/day")


def tokens_left(limiter: RateLimiter, who: str) -> int:
    """The chat tokens `who` has left (a peek answers as a request of 1 would: one more)."""
    quota = POLICY.quotas[1]
    peek = limiter.peek(POLICY.key(POLICY.identity_hash(who), quota), quota.limit)
    return peek.remaining + 1 if peek.allowed else 0


def chat(content: str, max_tokens: int, **extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, **extra}


def test_the_estimate_is_the_prompt_and_the_most_the_answer_may_take() -> None:
    assert estimate_tokens(chat("x" * 40, 100)) == 10 + 100
    assert estimate_tokens({"messages": [{"content": [{"type": "text", "text": "abcd"}]}], "n": 3}) == 1 + 3 * 1024
    assert estimate_tokens({"prompt": "abcdefgh", "max_completion_tokens": 7, "max_tokens": 99}) == 2 + 7
    for bad in ({"max_tokens": -1}, {"n": 0}, {"max_tokens": "5"}):
        with pytest.raises(ValueError):
            estimate_tokens(bad)
    assert usage_of({"usage": {"total_tokens": 12}}) == 12
    assert usage_of(b'data: {"usage":{"total_tokens":3}}\n\ndata: {"usage":{"total_tokens":9}}') == 9
    assert usage_of({"choices": []}) is None and usage_of(b"data: [DONE]") is None


def test_a_plain_and_a_streamed_answer_settle_to_exactly_their_usage(limiter: RateLimiter) -> None:
    budget = TokenBudget(limiter, POLICY)
    model = openai.OpenAI(base_url=model_url(), api_key="unused", max_retries=0)
    body = chat("one two three four", 50)
    with budget.reserve("alice", estimate_tokens(body)) as reservation:
        assert tokens_left(limiter, "alice") == 1000 - reservation.reserved, "reserved before the call"
        answer = model.chat.completions.create(**body)
        reservation.settle(answer)
    spent = answer.usage.total_tokens if answer.usage else 0
    assert tokens_left(limiter, "alice") == 1000 - spent
    with budget.reserve("alice", estimate_tokens(body)) as reservation:
        chunks = model.chat.completions.create(**body, stream=True, stream_options={"include_usage": True})
        text = "".join(c.choices[0].delta.content or "" for c in reservation.stream(chunks) if c.choices)
    assert "You wrote: one two three four" in text
    assert reservation.used is not None and reservation.used < reservation.reserved
    spent += reservation.used
    assert tokens_left(limiter, "alice") == 1000 - spent, "refunded the rest"


def test_an_overage_is_charged_in_debt_and_an_exception_gives_everything_back(limiter: RateLimiter) -> None:
    budget = TokenBudget(limiter, POLICY)
    with budget.reserve("bob", 100) as reservation:
        reservation.settle(900)
    assert tokens_left(limiter, "bob") == 100
    with pytest.raises(RuntimeError):
        with budget.reserve("bob", 80):
            assert tokens_left(limiter, "bob") == 20
            raise RuntimeError("the model call failed")
    assert tokens_left(limiter, "bob") == 100, "the reservation came back"
    with budget.reserve("bob", 50) as reservation:
        reservation.settle({"usage": {"total_tokens": 200}})
    assert tokens_left(limiter, "bob") == 0, "a debt: 50 more than was left"
    with pytest.raises(RateLimitExceeded) as refused:
        budget.reserve("bob", 1)
    assert refused.value.answer.status == 429 and refused.value.answer.header("Retry-After") is not None
    with pytest.raises(RateLimitExceeded) as never:
        budget.reserve("carol", 1001)
    assert never.value.answer.header("x-should-retry") == "false", "above the burst: it can never fit"
    assert tokens_left(limiter, "carol") == 1000, "a refused reservation costs nothing"


def test_threads_reserving_at_once_never_take_more_than_the_budget(url: str) -> None:
    admitted: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(12)

    def worker() -> None:
        budget = TokenBudget(RateLimiter.from_url(url), POLICY)
        start.wait()
        try:
            with budget.reserve("dave", 300) as reservation:
                with lock:
                    admitted.append(reservation.reserved)
                time.sleep(0.3)  # every reservation is held while the others ask
                reservation.settle(300)
        except RateLimitExceeded:
            pass

    threads = [threading.Thread(target=worker) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(admitted) == 3, admitted


def test_the_asyncio_budget_settles_streams_and_never_overspends(url: str) -> None:
    async def run() -> tuple[int, int, int]:
        limiter = AsyncRateLimiter.from_url(url)
        budget = AsyncTokenBudget(limiter, POLICY)
        model = openai.AsyncOpenAI(base_url=model_url(), api_key="unused", max_retries=0)
        body = chat("five six seven", 30)
        async with await budget.reserve("erin", estimate_tokens(body)) as reservation:
            stream = await model.chat.completions.create(**body, stream=True, stream_options={"include_usage": True})
            async for _ in reservation.stream(stream):
                pass
        used = reservation.used or 0
        sync = RateLimiter.from_url(url)
        left = tokens_left(sync, "erin")

        async def one() -> bool:
            try:
                async with await budget.reserve("frank", 400) as held:
                    await asyncio.sleep(0.2)
                    await held.settle(400)
                    return True
            except RateLimitExceeded:
                return False

        admitted = sum(await asyncio.gather(*(one() for _ in range(10))))
        await limiter.close()
        return used, left, admitted

    used, left, admitted = asyncio.run(run())
    assert 0 < used and left == 1000 - used
    assert admitted == 2, "two reservations of 400 fit in 1000"


def test_a_budget_without_redis_answers_as_on_error_says() -> None:
    down = RateLimiter.from_url(closed_port_url(), timeout=0.2)
    with pytest.raises(RequestRefused) as refused:
        TokenBudget(down, POLICY).reserve("gina", 10)
    assert refused.value.answer.status == 503 and not isinstance(refused.value, RateLimitExceeded)
    with TokenBudget(down, POLICY, on_error="allow").reserve("gina", 10) as reservation:
        assert reservation.reserved == 0
        reservation.settle(10)  # nothing to settle against: logged, never raised


def test_a_lease_is_renewed_while_held_and_released_after(limiter: RateLimiter) -> None:
    with Lease(limiter, "rl:{gpu}:slots", max_in_flight=1, lease_ms=300):
        time.sleep(1.0)  # three lease lengths: alive only if renewed
        with pytest.raises(RateLimitExceeded) as refused:
            with Lease(limiter, "rl:{gpu}:slots", max_in_flight=1, lease_ms=300):
                pass
        assert refused.value.answer.header("Retry-After") == "1"
    with Lease(limiter, "rl:{gpu}:slots", max_in_flight=1, lease_ms=300) as lease:
        assert lease.result is not None and lease.result.acquired


def test_an_asyncio_lease_is_renewed_and_released(url: str) -> None:
    async def run() -> tuple[bool, bool]:
        limiter = AsyncRateLimiter.from_url(url)
        async with AsyncLease(limiter, "rl:{gpu}:a", 1, lease_ms=300):
            await asyncio.sleep(1.0)
            second = await AsyncLease(limiter, "rl:{gpu}:a", 1, lease_ms=300).acquire()
        third = AsyncLease(limiter, "rl:{gpu}:a", 1, lease_ms=300)
        after = await third.acquire()
        await third.release()
        await limiter.close()
        return second.acquired, after.acquired

    assert asyncio.run(run()) == (False, True)
