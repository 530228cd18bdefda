"""A FastAPI dependency: per-route limits, with the key and the cost read from the request.

    from fastapi import Depends, FastAPI, Request
    from ml_api_rate_limiter import AsyncRateLimiter, Policy
    from ml_api_rate_limiter.fastapi import RateLimit

    limiter = AsyncRateLimiter.from_url("redis://localhost:6379")
    per_key = RateLimit(limiter, Policy("predict", requests="10/minute"),
                        key=lambda request: request.headers.get("x-api-key", request.client.host))

    @app.post("/predict", dependencies=[Depends(per_key)])
    async def predict(): ...

Refused: ``HTTPException(429)`` with ``Retry-After`` and the rate limit headers (FastAPI's body:
``{"detail": {"type": "rate_limited", "message": ..., "limits": [...]}}``). Admitted: the headers
go on the route's answer (when it returns data; a route that returns its own ``Response``
object sets headers itself). A concurrency lease is held until the route has returned.
Unreachable limiter: ``on_error`` as everywhere (``deny``: ``HTTPException(503)`` with
``Retry-After``).
"""

from __future__ import annotations

import inspect
import json
from typing import Any, AsyncIterator, Awaitable, Callable, Optional, Union

from fastapi import HTTPException, Request, Response

from .admission import AsyncAdmission
from .aio import AsyncRateLimiter
from .policy import Answer, Policy

RequestKey = Callable[[Request], Union[str, Awaitable[str]]]
RequestCost = Callable[[Request], Union[int, Awaitable[int]]]


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def _call(function: Callable[[Request], Any], request: Request) -> Any:
    value = function(request)
    return await value if inspect.isawaitable(value) else value


def http_exception(answer: Answer) -> HTTPException:
    """The answer as FastAPI raises it: its status, headers, and its error object as detail."""
    headers = {k: v for k, v in answer.headers if k.lower() != "content-type"}
    detail = json.loads(answer.body).get("error")
    return HTTPException(status_code=answer.status, detail=detail, headers=headers)


class RateLimit:
    """``Depends(RateLimit(limiter, policy, key=..., cost=...))``."""

    def __init__(
        self,
        limiter: AsyncRateLimiter,
        policy: Policy,
        *,
        key: RequestKey = client_address,
        cost: Optional[RequestCost] = None,
        on_error: str = "deny",
        error_retry_after: int = 1,
    ) -> None:
        self.admission = AsyncAdmission(limiter, policy, on_error, error_retry_after)
        self.key, self.cost = key, cost

    async def __call__(self, request: Request, response: Response) -> AsyncIterator[None]:
        identity = str(await _call(self.key, request))
        amount = await _call(self.cost, request) if self.cost is not None else 1
        admitted = await self.admission.admit(identity, cost=amount)
        if admitted.answer is not None:
            raise http_exception(admitted.answer)
        for name, value in admitted.headers:
            response.headers[name] = value
        try:
            yield
        finally:
            await admitted.afinish()
