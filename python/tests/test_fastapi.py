"""The ASGI middleware and the FastAPI dependency, served by a real uvicorn over HTTP, on real
Redis servers (every backend)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import AsyncIterator, Iterator

import httpx
import pytest
import redis
import uvicorn
from fastapi import Depends, FastAPI

from ml_api_rate_limiter import AsyncRateLimiter, Policy
from ml_api_rate_limiter.asgi import RateLimitMiddleware, header_or_client
from ml_api_rate_limiter.fastapi import RateLimit

from conftest import closed_port_url, free_port


def make_app(url: str, on_error: str = "deny", timeout: float = 0.5) -> FastAPI:
    app = FastAPI()
    limiter = AsyncRateLimiter.from_url(url, timeout=timeout)
    app.add_middleware(
        RateLimitMiddleware,
        limiter=limiter,
        policy=Policy("api", requests="5/minute"),
        key=header_or_client("x-api-key"),
        paths=["/v1/"],
        exempt=["/v1/health"],
        on_error=on_error,
    )
    per_key = RateLimit(
        AsyncRateLimiter.from_url(url, timeout=timeout),
        Policy("search", requests="2/minute", concurrency=1),
        key=lambda request: request.headers.get("x-api-key", "anonymous"),
        on_error=on_error,
    )
    slow = RateLimit(
        AsyncRateLimiter.from_url(url, timeout=timeout),
        Policy("slow", concurrency=1),
        key=lambda request: "everyone",
    )

    @app.get("/v1/predict")
    async def predict() -> dict[str, str]:
        return {"label": "positive"}

    @app.get("/v1/health")
    async def health() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/search", dependencies=[Depends(per_key)])
    async def search(q: str = "") -> dict[str, str]:
        return {"q": q}

    @app.get("/slow", dependencies=[Depends(slow)])
    async def slow_route() -> dict[str, bool]:
        await asyncio.sleep(0.5)
        return {"done": True}

    @app.get("/public")
    async def public() -> dict[str, bool]:
        return {"ok": True}

    return app


@contextlib.contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """The app on a real uvicorn server, on a free port, in a thread."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(5)


def test_the_middleware_limits_its_paths_with_the_headers_and_429(url: str) -> None:
    with serve(make_app(url)) as base:
        with httpx.Client(base_url=base) as http:
            for left in range(4, -1, -1):
                ok = http.get("/v1/predict", headers={"x-api-key": "alice"})
                assert ok.status_code == 200
                assert (ok.headers["x-ratelimit-limit"], ok.headers["x-ratelimit-remaining"]) == ("5", str(left))
                assert ok.headers["ratelimit-policy"] == '"api";q=5;w=60'
            refused = http.get("/v1/predict", headers={"x-api-key": "alice"})
            assert refused.status_code == 429 and refused.headers["retry-after"] == "12"
            assert refused.json()["error"]["type"] == "rate_limited"
            assert refused.headers["ratelimit"] == '"api";r=0;t=12'
            assert http.get("/v1/predict", headers={"x-api-key": "bob"}).status_code == 200
            for path in ("/v1/health", "/public"):
                answer = http.get(path, headers={"x-api-key": "alice"})
                assert answer.status_code == 200 and "x-ratelimit-limit" not in answer.headers, path


def test_the_dependency_limits_a_route_and_its_concurrency(url: str) -> None:
    with serve(make_app(url)) as base:
        with httpx.Client(base_url=base) as http:
            ok = http.get("/search", headers={"x-api-key": "carol"})
            assert ok.status_code == 200 and ok.headers["x-ratelimit-remaining"] == "1"
            assert http.get("/search", headers={"x-api-key": "carol"}).status_code == 200
            refused = http.get("/search", headers={"x-api-key": "carol"})
            assert refused.status_code == 429 and refused.headers["retry-after"] == "30"
            assert refused.json()["detail"]["type"] == "rate_limited"

        async def both() -> list[int]:
            async with httpx.AsyncClient(base_url=base) as client:
                answers = await asyncio.gather(client.get("/slow"), client.get("/slow"))
                return sorted(a.status_code for a in answers)

        assert asyncio.run(both()) == [200, 429], "one in flight at a time"
        with httpx.Client(base_url=base) as http:
            assert http.get("/slow").status_code == 200, "the lease was given back"


def test_concurrent_requests_never_take_more_than_the_budget(url: str) -> None:
    with serve(make_app(url)) as base:

        async def burst() -> list[int]:
            async with httpx.AsyncClient(base_url=base) as client:
                answers = await asyncio.gather(
                    *(client.get("/v1/predict", headers={"x-api-key": "dave"}) for _ in range(30))
                )
                return [a.status_code for a in answers]

        codes = asyncio.run(burst())
        assert codes.count(200) == 5 and codes.count(429) == 25


@pytest.mark.parametrize("on_error", ["deny", "allow"])
def test_redis_unreachable_answers_as_on_error_says_within_the_timeout(on_error: str) -> None:
    with serve(make_app(closed_port_url(), on_error=on_error, timeout=0.2)) as base:
        with httpx.Client(base_url=base) as http:
            started = time.monotonic()
            answer = http.get("/v1/predict")
            routed = http.get("/search")
            assert time.monotonic() - started < 2
    expected = 503 if on_error == "deny" else 200
    assert (answer.status_code, routed.status_code) == (expected, expected)
    if on_error == "deny":
        assert answer.headers["retry-after"] == "1" and routed.headers["retry-after"] == "1"
        assert answer.json()["error"]["type"] == "rate_limiter_unavailable"


def test_a_redis_that_stops_answering_is_bounded_by_the_timeout(url: str, admin: redis.Redis) -> None:
    with serve(make_app(url, timeout=0.3)) as base:
        with httpx.Client(base_url=base, timeout=10) as http:
            assert http.get("/v1/predict").status_code == 200
            admin.execute_command("CLIENT", "PAUSE", 2000, "ALL")
            try:
                started = time.monotonic()
                answer = http.get("/v1/predict")
                waited = time.monotonic() - started
            finally:
                admin.execute_command("CLIENT", "UNPAUSE")
    assert answer.status_code == 503
    assert waited < 1.5, f"answered within the timeout, not Redis's pause: {waited:.2f} s"


def test_the_middleware_holds_a_lease_until_the_streamed_body_is_sent(url: str) -> None:
    from fastapi.responses import StreamingResponse

    app = FastAPI()
    app.add_middleware(
        RateLimitMiddleware,
        limiter=AsyncRateLimiter.from_url(url),
        policy=Policy("stream", concurrency=1),
        paths=["/stream"],
    )

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def parts() -> AsyncIterator[bytes]:
            for i in range(3):
                await asyncio.sleep(0.3)
                yield f"part {i}\n".encode()

        return StreamingResponse(parts(), media_type="text/plain")

    with serve(app) as base:

        async def overlap() -> tuple[int, int, bytes]:
            async with httpx.AsyncClient(base_url=base) as client:
                first = asyncio.ensure_future(client.get("/stream"))
                await asyncio.sleep(0.5)  # the first answer's headers are out, its body is not
                second = await client.get("/stream")
                done = await first
                return done.status_code, second.status_code, done.content

        assert asyncio.run(overlap()) == (200, 429, b"part 0\npart 1\npart 2\n")
        with httpx.Client(base_url=base) as http:
            assert http.get("/stream").status_code == 200, "released once the body was sent"
