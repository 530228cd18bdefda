"""The examples run as the README shows them: as programs, on real servers."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import openai
import pytest

from ml_api_rate_limiter import Policy, RateLimiter

from conftest import admin_client, free_port, model_url, servers

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@contextlib.contextmanager
def running(args: list[str], port: int, env: dict[str, str], ready: str) -> Iterator[str]:
    process = subprocess.Popen(
        args, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=EXAMPLES.parent
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(base + ready, timeout=1):
                    break
            except OSError as e:
                if process.poll() is not None or time.monotonic() > deadline:
                    out = process.stdout.read().decode() if process.stdout else ""
                    raise RuntimeError(f"{args} did not start: {e}\n{out}") from e
                if getattr(e, "code", None) is not None:  # an HTTP error: the server answers
                    break
                time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture
def redis_url() -> str:
    """The server with the module (else any), emptied first, for the examples to connect to."""
    backend = "module" if "module" in servers() else next(iter(servers()))
    with admin_client(backend) as admin:
        admin.flushall()
    return servers()[backend]


def client(base: str, *extra: str) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, str(EXAMPLES / "client.py"), "--url", f"{base}/predict", "--key", "demo", *extra]
    return subprocess.run(args, capture_output=True, text=True, timeout=60)


def test_the_flask_model_api_and_the_original_client(redis_url: str) -> None:
    port = free_port()
    args = [sys.executable, str(EXAMPLES / "flask_model_api.py")]
    with running(args, port, {"REDIS_URL": redis_url, "PORT": str(port)}, "/health") as base:
        done = client(base, "-n", "12")
        lines = done.stdout.splitlines()
        assert done.returncode == 1, done.stdout + done.stderr
        assert lines[0] == "1: positive. You can send 9 more requests in the next 6 seconds.", lines
        assert lines[9].startswith("10: positive. You can send 0 more requests in the next ")
        assert lines[10] == "Rate limited: try again in 6 seconds.", lines
        not_text = urllib.request.Request(f"{base}/predict", data=b"[1]", headers={"X-API-Key": "other"}, method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(not_text, timeout=10)
        assert refused.value.code == 400
        waited = client(base, "-n", "1", "--wait")
        assert waited.returncode == 0, waited.stdout + waited.stderr
        assert waited.stdout.splitlines()[0].startswith("Rate limited: waiting "), waited.stdout
        assert waited.stdout.splitlines()[-1].startswith("1: positive. You can send 0 more")


def test_the_fastapi_llm_endpoint_reserves_and_settles(redis_url: str) -> None:
    port = free_port()
    args = [sys.executable, "-m", "uvicorn", "fastapi_llm:app", "--app-dir", str(EXAMPLES), "--port", str(port)]
    # A day's budget: it refills by 0.12 tokens a second, so the test sees the settlements.
    env = {"REDIS_URL": redis_url, "OPENAI_BASE_URL": model_url(), "CHAT_TOKENS": "10000/day"}
    with running(args, port, env, "/docs") as base:
        sdk = openai.OpenAI(base_url=f"{base}/v1", api_key="demo", max_retries=0)
        raw = sdk.chat.completions.with_raw_response.create(
            model="m", messages=[{"role": "user", "content": "hello there"}], max_tokens=50
        )
        answer = raw.parse()
        assert raw.headers["ratelimit-policy"] == '"chat-requests";q=20;w=60, "chat-tokens";q=10000;w=86400;qu="tokens"'
        used = answer.usage.total_tokens if answer.usage else 0
        chunks = list(
            sdk.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hello again"}], max_tokens=50, stream=True
            )
        )
        assert any(c.choices and c.choices[0].delta.content for c in chunks)
        streamed = next(c.usage.total_tokens for c in chunks if c.usage)
        policy = Policy("chat", requests="20/minute", tokens="10000/day")
        tokens = policy.quotas[1]
        key = policy.key(policy.identity_hash("key:demo"), tokens)
        left = RateLimiter.from_url(redis_url).peek(key, tokens.limit).remaining + 1
        assert 10000 - used - streamed <= left <= 10000 - used - streamed + 1, "settled to the two usages"
        # Hostile bodies: a 400 for what is not a chat request, a 502 for what the model refuses
        # (streamed or not), never a 500 or an empty 200 stream; each costs no token.
        headers = {"Authorization": "Bearer hostile", "Content-Type": "application/json"}
        for body, expected in [
            (b"not json", 400),
            (b"", 400),
            (b"[1,2]", 400),
            (b'"str"', 400),
            (b'{"model":"m","messages":5}', 400),
            (b'{"model":"m","messages":[5],"max_tokens":5}', 502),
            (b'{"model":"m","messages":[5],"max_tokens":5,"stream":true}', 502),
        ]:
            request = urllib.request.Request(f"{base}/v1/chat/completions", data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=10) as answer:
                    status = answer.status
            except urllib.error.HTTPError as e:
                status = e.code
            assert status == expected, (body, status)
        hostile = policy.key(policy.identity_hash("key:hostile"), tokens)
        assert RateLimiter.from_url(redis_url).peek(hostile, tokens.limit).remaining + 1 == 10000
        extra = sdk.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}], max_tokens=5, extra_body={"bogus": 1}
        )
        assert extra.choices, "an unknown field goes to the model as it came"
        with pytest.raises(openai.RateLimitError) as refused:
            sdk.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], max_tokens=20000)
        assert refused.value.response.headers["x-should-retry"] == "false", "can never fit: not retried"
