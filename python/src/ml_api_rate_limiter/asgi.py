"""A pure ASGI middleware (Starlette, FastAPI, any ASGI app): every HTTP request under ``paths``
is admitted under one policy before the app sees it, on the asyncio client (the event loop is
never blocked).

    from ml_api_rate_limiter import AsyncRateLimiter, Policy
    from ml_api_rate_limiter.asgi import RateLimitMiddleware, header_or_client

    app.add_middleware(
        RateLimitMiddleware,
        limiter=AsyncRateLimiter.from_url("redis://localhost:6379"),
        policy=Policy("api", requests=["10/second", "600/hour"], concurrency=8),
        key=header_or_client("x-api-key"),
        paths=["/v1/"], exempt=["/v1/health"],
    )

Refused: ``429`` with ``Retry-After`` and a JSON body, before the app is called. Admitted: the
app's answer gets ``RateLimit-Policy``, ``RateLimit`` and ``X-RateLimit-*``; a concurrency
lease is held until the last body chunk is sent (or the app fails). ``key(scope)`` and
``cost(scope)`` may be plain or ``async`` functions of the ASGI scope.
"""

from __future__ import annotations

import inspect
from typing import Any, Awaitable, Callable, MutableMapping, Optional, Sequence, Union

from .admission import AsyncAdmission
from .aio import AsyncRateLimiter
from .policy import Answer, Policy

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
KeyFunction = Callable[[Scope], Union[str, Awaitable[str]]]
CostFunction = Callable[[Scope], Union[int, Awaitable[int]]]


def header(scope: Scope, name: str) -> Optional[str]:
    """The first ``name`` header of an ASGI request (names compared in lower case)."""
    wanted = name.lower().encode("latin-1")
    for key, value in scope.get("headers", []):
        if key.lower() == wanted:
            return bytes(value).decode("latin-1")
    return None


def client_host(scope: Scope) -> str:
    """The client's address as the server saw it (behind a proxy, configure the server's
    ``--proxy-headers``)."""
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def header_or_client(name: str) -> Callable[[Scope], str]:
    """A key function: the ``name`` header (an API key), else the client's address."""

    def key(scope: Scope) -> str:
        value = header(scope, name)
        return f"key:{value}" if value else f"addr:{client_host(scope)}"

    return key


async def _call(function: Callable[[Scope], Any], scope: Scope) -> Any:
    value = function(scope)
    return await value if inspect.isawaitable(value) else value


async def send_answer(send: Send, answer: Answer) -> None:
    headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in answer.headers]
    headers.append((b"content-length", str(len(answer.body)).encode()))
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": answer.body, "more_body": False})


class RateLimitMiddleware:
    """Admits every HTTP request whose path starts with one of ``paths`` (and none of
    ``exempt``) under ``policy``; see the module's documentation."""

    def __init__(
        self,
        app: ASGIApp,
        limiter: AsyncRateLimiter,
        policy: Policy,
        *,
        key: KeyFunction = client_host,
        cost: Optional[CostFunction] = None,
        paths: Sequence[str] = ("/",),
        exempt: Sequence[str] = (),
        on_error: str = "deny",
        error_retry_after: int = 1,
    ) -> None:
        self.app = app
        self.admission = AsyncAdmission(limiter, policy, on_error, error_retry_after)
        self.key, self.cost = key, cost
        self.paths, self.exempt = tuple(paths), tuple(exempt)

    def covers(self, path: str) -> bool:
        return path.startswith(self.paths) and not (self.exempt and path.startswith(self.exempt))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.covers(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        identity = str(await _call(self.key, scope))
        amount = await _call(self.cost, scope) if self.cost is not None else 1
        admitted = await self.admission.admit(identity, cost=amount)
        if admitted.answer is not None:
            await send_answer(send, admitted.answer)
            return
        extra = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in admitted.headers]
        finished = False

        async def send_with_headers(message: Message) -> None:
            nonlocal finished
            if message["type"] == "http.response.start" and extra:
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False) and not finished:
                finished = True
                await admitted.afinish()

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            if not finished:
                await admitted.afinish()
