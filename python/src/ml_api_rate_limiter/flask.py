"""The Flask extension: a decorator per view, and optionally a default policy for every view.

    from ml_api_rate_limiter import Policy, RateLimiter
    from ml_api_rate_limiter.flask import FlaskRateLimiter, header_or_address

    limiter = FlaskRateLimiter(app, RateLimiter.from_url("redis://localhost:6379"),
                               key=header_or_address("X-API-Key"))

    @app.post("/predict")
    @limiter.limit("10/minute", "100/hour")          # both charged, or neither
    def predict(): ...

    @app.post("/embed")
    @limiter.limit(policy=Policy("embed", requests="600/minute", concurrency=4),
                   cost=lambda: len(request.json["inputs"]))
    def embed(): ...

    @app.get("/health")
    @limiter.exempt
    def health(): ...

A refused request gets ``429`` with ``Retry-After`` and the gateway's JSON body; every answer
a policy covered carries ``RateLimit-Policy``, ``RateLimit`` and ``X-RateLimit-*``. The
limiter unreachable: ``on_error`` (``deny``: ``503`` + ``Retry-After``; ``allow``; ``raise``:
:class:`~ml_api_rate_limiter.policy.LimiterUnavailable`). A concurrency lease is held until
the answer is sent, streamed bodies included.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional, TypeVar, cast

from flask import Flask, Response, current_app, g, request

from .admission import Admission, Admitted
from .client import RateLimiter
from .policy import Answer, LimitLike, Policy, RequestRefused

F = TypeVar("F", bound=Callable[..., Any])

#: Marks a view that sets its own limits (or none): the default policy skips it.
_OWN_LIMITS = "_ml_api_rate_limiter_own_limits"


def remote_address() -> str:
    """The client's address as the WSGI server saw it (behind a proxy, use ProxyFix)."""
    return request.remote_addr or "unknown"


def header_or_address(name: str) -> Callable[[], str]:
    """A key function: the request's ``name`` header (an API key), else the client's address."""

    def key() -> str:
        value = request.headers.get(name)
        return f"key:{value}" if value else f"addr:{remote_address()}"

    return key


def answer_response(answer: Answer) -> Response:
    return Response(answer.body, status=answer.status, headers=answer.headers)


class FlaskRateLimiter:
    """Rate limits for a Flask app. ``key``: who a request counts against (a function of
    :data:`flask.request`, default the client's address). ``default``: a policy for every view
    without a :meth:`limit` or :meth:`exempt` of its own."""

    def __init__(
        self,
        app: Optional[Flask] = None,
        limiter: Optional[RateLimiter] = None,
        *,
        key: Callable[[], str] = remote_address,
        default: Optional[Policy] = None,
        on_error: str = "deny",
        error_retry_after: int = 1,
    ) -> None:
        self.limiter = limiter
        self.key = key
        self.on_error = on_error
        self.error_retry_after = error_retry_after
        self.default: Optional[Admission] = None
        self._default_policy = default
        self._policy_names: dict[str, Callable[..., Any]] = {}
        self._hooked = False
        if app is not None:
            self.init_app(app, limiter)

    def init_app(self, app: Flask, limiter: Optional[RateLimiter] = None) -> None:
        self.limiter = limiter or self.limiter
        if self.limiter is None:
            raise ValueError("FlaskRateLimiter needs a RateLimiter (RateLimiter.from_url(...))")
        # Registered first, our after_request runs last: it sees the answer that is sent.
        self._hooked = True
        app.after_request(self._after)
        if self._default_policy is not None:
            self.default = self._admission(self._default_policy)
            app.before_request(self._before)
        app.teardown_request(self._teardown)
        app.register_error_handler(RequestRefused, lambda e: answer_response(e.answer))

    def _admission(self, policy: Policy) -> Admission:
        if self.limiter is None or not self._hooked:
            raise ValueError("FlaskRateLimiter needs init_app(app, limiter) (or both given to it) first")
        return Admission(self.limiter, policy, self.on_error, self.error_retry_after)

    # --- the default policy ----------------------------------------------------------------

    def _before(self) -> Optional[Response]:
        view = current_app.view_functions.get(request.endpoint or "")
        if self.default is None or view is None or getattr(view, _OWN_LIMITS, False):
            return None
        admitted = self.default.admit(self.key())
        if admitted.answer is not None:
            return answer_response(admitted.answer)
        _pending().append(admitted)
        return None

    def _after(self, response: Response) -> Response:
        """The request's admissions: headers onto the answer, and their leases released once
        it is sent (a streamed body included). A file sent by the server itself
        (``send_file``, ``direct_passthrough``) is never closed through Flask: its lease is
        released at teardown instead."""
        pending = _pending()
        for admitted in pending:
            for name, value in admitted.headers:
                response.headers[name] = value
        if not response.direct_passthrough:
            for admitted in pending:
                response.call_on_close(admitted.finish)
            pending.clear()
        return response

    def _teardown(self, error: Optional[BaseException]) -> None:
        """Whatever no answer took (the view raised, or a file answer): released now."""
        for admitted in g.pop(_PENDING, []):
            admitted.finish()

    # --- per view --------------------------------------------------------------------------

    def limit(
        self,
        *limits: LimitLike,
        policy: Optional[Policy] = None,
        concurrency: Optional[int] = None,
        key: Optional[Callable[[], str]] = None,
        cost: Optional[Callable[[], int]] = None,
        exempt_when: Optional[Callable[[], bool]] = None,
    ) -> Callable[[F], F]:
        """Limits a view: ``limit("10/minute", "100/hour")`` (all charged or none, counted per
        ``key``), or ``limit(policy=Policy(...))``; ``cost``: what a request costs (default 1);
        ``exempt_when``: a request for which it returns true is not limited."""
        if policy is not None and (limits or concurrency is not None):
            raise ValueError("give either limits (and concurrency) or a policy, not both")

        def decorate(view: F) -> F:
            chosen = policy or Policy(view.__name__, requests=list(limits) or None, concurrency=concurrency)
            # Two views of one name (in two blueprints) would share their Redis keys, each
            # reading the other's buckets with its own rates: refused, name one yourself.
            owner = self._policy_names.setdefault(chosen.name, view)
            if owner is not view and policy is None:
                raise ValueError(
                    f"two views named {chosen.name!r} would share their limits: give one "
                    f"policy=Policy('another-name', ...)"
                )
            admission: Optional[Admission] = None

            @functools.wraps(view)
            def limited(*args: Any, **kwargs: Any) -> Any:
                nonlocal admission
                if exempt_when is not None and exempt_when():
                    return view(*args, **kwargs)
                if admission is None:
                    admission = self._admission(chosen)
                amount = cost() if cost is not None else 1
                admitted = admission.admit((key or self.key)(), cost=amount)
                if admitted.answer is not None:
                    return answer_response(admitted.answer)
                # Finished by _after once the answer is sent, or by _teardown if none is.
                _pending().append(admitted)
                return view(*args, **kwargs)

            setattr(limited, _OWN_LIMITS, True)
            return cast(F, limited)

        return decorate

    def exempt(self, view: F) -> F:
        """No limit for this view, not even the default policy's."""
        setattr(view, _OWN_LIMITS, True)
        return view


_PENDING = "_ml_api_rate_limiter_pending"


def _pending() -> list[Admitted]:
    """This request's admissions whose leases are not yet handed to an answer."""
    pending: Optional[list[Admitted]] = g.get(_PENDING)
    if pending is None:
        pending = []
        setattr(g, _PENDING, pending)
    return pending
