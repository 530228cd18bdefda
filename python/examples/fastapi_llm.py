"""A FastAPI LLM endpoint in OpenAI's shape: per API key, 20 requests and 10 000 tokens a minute.
Each request reserves its estimate (prompt + max_tokens) before the model is called, in the
same all-or-nothing call as the request limit, and settles on the model's usage when the answer
(plain or streamed) is done: concurrent requests never spend more than the budget.

    pip install './python[fastapi]' uvicorn openai
    REDIS_URL=redis://127.0.0.1:6379/ OPENAI_BASE_URL=http://127.0.0.1:9000/v1 \\
      uvicorn fastapi_llm:app --app-dir python/examples --port 8000
    curl localhost:8000/v1/chat/completions -H 'Authorization: Bearer demo' \\
      -d '{"model": "m", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 50}'

``OPENAI_BASE_URL`` is any OpenAI-compatible API (the repository's demo model by default:
``target/release/gateway model``); ``OPENAI_API_KEY`` the key sent to it; ``CHAT_REQUESTS`` and
``CHAT_TOKENS`` change the limits (``"20/minute"``, ``"10000/minute"``).
"""

from __future__ import annotations

import inspect
import os
from typing import AsyncIterator

import openai
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ml_api_rate_limiter import AsyncRateLimiter, AsyncTokenBudget, Policy, RequestRefused, estimate_tokens

limiter = AsyncRateLimiter.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/"), timeout=0.5)
budget = AsyncTokenBudget(
    limiter,
    Policy(
        "chat",
        requests=os.environ.get("CHAT_REQUESTS", "20/minute"),
        tokens=os.environ.get("CHAT_TOKENS", "10000/minute"),
    ),
)
model = openai.AsyncOpenAI(
    base_url=os.environ.get("OPENAI_BASE_URL", "http://127.0.0.1:9000/v1"),
    api_key=os.environ.get("OPENAI_API_KEY", "unused"),
    max_retries=0,
)
app = FastAPI()


@app.exception_handler(RequestRefused)
async def refused(request: Request, error: RequestRefused) -> Response:
    """429 (or 503 when Redis cannot be asked) with Retry-After and the rate limit headers."""
    answer = error.answer
    return Response(answer.body, status_code=answer.status, headers=dict(answer.headers))


def api_key(request: Request) -> str:
    token = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
    return f"key:{token}" if token else f"addr:{request.client.host if request.client else 'unknown'}"


#: The arguments the SDK's create() takes by name; anything else in a body goes as extra_body.
KNOWN = set(inspect.signature(model.chat.completions.create).parameters) - {"extra_body", "extra_headers"}


def bad_request(message: str) -> Response:
    return JSONResponse({"error": {"type": "invalid_request_error", "message": message}}, status_code=400)


def upstream_error(error: Exception) -> Response:
    return JSONResponse({"error": {"type": "upstream_error", "message": str(error)}}, status_code=502)


@app.post("/v1/chat/completions")
async def chat(request: Request) -> Response:
    try:
        body = await request.json()
        tokens = estimate_tokens(body)
    except ValueError as e:  # not JSON (JSONDecodeError is a ValueError), or not a chat request
        return bad_request(str(e))
    call = {k: v for k, v in body.items() if k in KNOWN}
    call["extra_body"] = {k: v for k, v in body.items() if k not in KNOWN} or None
    reservation = await budget.reserve(api_key(request), tokens)  # raises RequestRefused
    headers = dict(reservation.headers)
    if not body.get("stream"):
        try:
            async with reservation:  # an exception gives the whole reservation back
                answer = await model.chat.completions.create(**call)
                await reservation.settle(answer)
        except openai.APIError as e:
            return upstream_error(e)
        return JSONResponse(answer.model_dump(exclude_unset=True), headers=headers)

    # The model is asked before the answer starts: a refusal is a 502, not an empty 200 stream.
    try:
        stream = await model.chat.completions.create(**{**call, "stream_options": {"include_usage": True}})
    except openai.APIError as e:
        await reservation.cancel()  # the model did nothing: the whole reservation back
        await reservation.admitted.afinish()
        return upstream_error(e)

    async def events() -> AsyncIterator[str]:
        async with reservation:
            async for chunk in reservation.stream(stream):  # settled on the usage chunk
                yield f"data: {chunk.model_dump_json(exclude_unset=True)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)
