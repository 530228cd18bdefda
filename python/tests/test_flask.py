"""The Flask extension through Flask's test client, on real Redis servers (every backend)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import redis
from flask import Flask, Response, request

from ml_api_rate_limiter import LimiterUnavailable, Policy, RateLimiter
from ml_api_rate_limiter.flask import FlaskRateLimiter, header_or_address

from conftest import closed_port_url


def make_app(limiter: RateLimiter, **options: Any) -> tuple[Flask, FlaskRateLimiter]:
    app = Flask(__name__)
    rl = FlaskRateLimiter(app, limiter, key=header_or_address("X-API-Key"), **options)

    @app.post("/predict")
    @rl.limit("3/minute", "10/hour")
    def predict() -> Any:
        return {"label": "positive"}

    @app.post("/embed")
    @rl.limit("100/hour", cost=lambda: len(request.get_json()["inputs"]), exempt_when=lambda: request.args.get("free") == "1")
    def embed() -> Any:
        return {"vectors": len(request.get_json()["inputs"])}

    @app.get("/stream")
    @rl.limit(policy=Policy("stream", concurrency=1))
    def stream() -> Response:
        return Response((f"part {i}\n" for i in range(3)), mimetype="text/plain")

    @app.get("/health")
    @rl.exempt
    def health() -> Any:
        return {"ok": True}

    @app.get("/models")
    def models() -> Any:
        return {"data": []}

    return app, rl


def test_a_decorated_view_answers_with_the_headers_and_refuses_with_429(limiter: RateLimiter) -> None:
    app, _ = make_app(limiter)
    client = app.test_client()
    for left in (2, 1, 0):
        ok = client.post("/predict", headers={"X-API-Key": "alice"})
        assert ok.status_code == 200
        assert ok.headers["X-RateLimit-Limit"] == "3"
        assert ok.headers["X-RateLimit-Remaining"] == str(left)
        assert ok.headers["RateLimit-Policy"] == '"predict-requests-60s";q=3;w=60, "predict-requests-3600s";q=10;w=3600'
        assert ok.headers["RateLimit"].startswith(f'"predict-requests-60s";r={left};t=')
    refused = client.post("/predict", headers={"X-API-Key": "alice"})
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "20", "3 a minute: one every 20 s"
    body = refused.get_json()["error"]
    assert body["type"] == "rate_limited" and body["retry_after_seconds"] == 20
    assert [l["name"] for l in body["limits"]] == ["requests-60s"]
    assert client.post("/predict", headers={"X-API-Key": "bob"}).status_code == 200, "another key"


def test_two_limits_are_all_or_nothing_a_refused_request_charges_neither(limiter: RateLimiter) -> None:
    app, _ = make_app(limiter)
    client = app.test_client()
    for _ in range(3):
        assert client.post("/predict", headers={"X-API-Key": "carol"}).status_code == 200
    for _ in range(5):
        assert client.post("/predict", headers={"X-API-Key": "carol"}).status_code == 429
    policy = Policy("predict", requests=["3/minute", "10/hour"])
    hour = policy.quotas[1]
    left = limiter.peek(policy.key(policy.identity_hash("key:carol"), hour), hour.limit).remaining
    # 7 left (a peek answers as a request of 1 would: 6 after it): charged by the 3 admitted only.
    assert left == 6


def test_cost_exemptions_and_views_without_limits(limiter: RateLimiter) -> None:
    app, _ = make_app(limiter)
    client = app.test_client()
    first = client.post("/embed", json={"inputs": ["a"] * 60}, headers={"X-API-Key": "dave"})
    assert first.headers["X-RateLimit-Remaining"] == "40"
    assert client.post("/embed", json={"inputs": ["a"] * 41}, headers={"X-API-Key": "dave"}).status_code == 429
    free = client.post("/embed?free=1", json={"inputs": ["a"] * 500}, headers={"X-API-Key": "dave"})
    assert free.status_code == 200 and "X-RateLimit-Limit" not in free.headers
    assert "X-RateLimit-Limit" not in client.get("/health").headers
    assert "X-RateLimit-Limit" not in client.get("/models").headers


def test_a_default_policy_covers_the_views_without_their_own(limiter: RateLimiter) -> None:
    app, _ = make_app(limiter, default=Policy("default", requests="2/minute"))
    client = app.test_client()
    assert [client.get("/models").status_code for _ in range(3)] == [200, 200, 429]
    assert client.get("/models").headers["Retry-After"] == "30"
    assert all(client.get("/health").status_code == 200 for _ in range(5)), "exempt"
    assert client.post("/predict", headers={"X-API-Key": "erin"}).headers["X-RateLimit-Limit"] == "3", "its own"


def test_a_concurrency_lease_is_held_until_the_streamed_answer_is_sent(limiter: RateLimiter) -> None:
    app, _ = make_app(limiter)
    client = app.test_client()
    first = client.get("/stream", buffered=False)
    assert first.status_code == 200
    second = client.get("/stream")
    assert second.status_code == 429 and second.get_json()["error"]["limits"][0]["unit"] == "concurrent_requests"
    assert b"".join(first.response) == b"part 0\npart 1\npart 2\n"
    first.close()
    assert client.get("/stream").status_code == 200, "the slot came back"


@pytest.mark.parametrize("on_error", ["deny", "allow", "raise"])
def test_redis_unreachable_answers_as_on_error_says_within_the_timeout(on_error: str) -> None:
    app, _ = make_app(RateLimiter.from_url(closed_port_url(), timeout=0.2), on_error=on_error, error_retry_after=3)
    app.config["PROPAGATE_EXCEPTIONS"] = True
    client = app.test_client()
    started = time.monotonic()
    if on_error == "raise":
        with pytest.raises(LimiterUnavailable):
            client.post("/predict")
    else:
        answer = client.post("/predict")
        if on_error == "deny":
            assert answer.status_code == 503 and answer.headers["Retry-After"] == "3"
            assert answer.get_json()["error"]["type"] == "rate_limiter_unavailable"
        else:
            assert answer.status_code == 200 and "X-RateLimit-Limit" not in answer.headers
    assert time.monotonic() - started < 2


def test_a_redis_that_stops_answering_is_bounded_by_the_timeout(url: str, admin: redis.Redis) -> None:
    app, _ = make_app(RateLimiter.from_url(url, timeout=0.3))
    client = app.test_client()
    assert client.post("/predict").status_code == 200
    admin.execute_command("CLIENT", "PAUSE", 2000, "ALL")
    try:
        started = time.monotonic()
        answer = client.post("/predict")
        waited = time.monotonic() - started
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")
    assert answer.status_code == 503, json.loads(answer.data)
    assert waited < 1.5, f"answered within the timeout, not Redis's pause: {waited:.2f} s"
