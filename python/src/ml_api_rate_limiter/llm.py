"""LLM token budgets: reserve an estimate before the model is called, settle on the usage after.

    budget = TokenBudget(limiter, Policy("chat", requests="60/minute", tokens="90000/minute"))

    with budget.reserve(api_key, estimate_tokens(body)) as reservation:   # 429 if it does not fit
        answer = openai.chat.completions.create(**body)
        reservation.settle(answer)                   # the usage, or a number of tokens

    with budget.reserve(api_key, estimate_tokens(body)) as reservation:
        for chunk in reservation.stream(openai.chat.completions.create(**body, stream=True,
                                        stream_options={"include_usage": True})):
            ...                                      # settled when the stream ends

- **Reserve**: the request's limits (cost 1) and the token limits (cost: the estimate) in one
  ``RL.CHECKALL``: concurrent requests can never reserve more than the budget holds, and a
  request refused by either costs nothing on the other. Refused: :class:`RateLimitExceeded`
  (a :class:`RequestRefused`), whose ``answer`` is the ``429`` (``Retry-After``; ``x-should-retry: false`` when the
  estimate is above the budget's burst and can never fit).
- **Settle**: used < reserved gives the rest back (``RL.REFUND``); used > reserved charges the
  overage whatever is left (``RL.CHECK ... FORCE``: a debt bounded at one burst, which later
  requests wait off).
- **An exception** inside the block before settlement gives the whole reservation back (the
  model call failed). A block that ends without usage (a stream without ``include_usage``)
  keeps the reservation: the model did work we cannot count. A settlement that fails to reach
  Redis is logged, never raised into the answer.

:class:`AsyncTokenBudget` is the same with ``async with`` and ``async for``.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping, Optional, TypeVar

from .admission import FAILURES, MAX_INTEGER, Admission, Admitted, AsyncAdmission, amount
from .policy import Headers, Policy, refused

if TYPE_CHECKING:
    from .aio import AsyncRateLimiter
    from .client import RateLimiter

log = logging.getLogger("ml_api_rate_limiter")
T = TypeVar("T")

CHARS_PER_TOKEN = 4
_TOTAL_TOKENS = re.compile(rb'"total_tokens"\s*:\s*(\d+)')


def estimate_tokens(body: Mapping[str, Any], default_max_tokens: int = 1024) -> int:
    """A reservation for an OpenAI-style chat request: its messages' characters / 4, plus
    ``max_completion_tokens`` (else ``max_tokens``, else ``default_max_tokens``) for each of
    its ``n`` choices. Coarse on purpose: settlement corrects it."""
    if not isinstance(body, Mapping):
        raise ValueError(f"a chat request is a JSON object, not {type(body).__name__}")
    chars = 0
    messages = body.get("messages") or ()
    if not isinstance(messages, (list, tuple)):
        raise ValueError("messages must be a list")
    for message in messages:
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            for part in content:
                text = part.get("text") if isinstance(part, Mapping) else None
                if text is not None and not isinstance(text, str):
                    raise ValueError(f"a content part's text must be a string, not {type(text).__name__}")
                chars += len(text or "")
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        chars += len(prompt)
    completion = next(
        (body[f] for f in ("max_completion_tokens", "max_tokens") if body.get(f) is not None), default_max_tokens
    )
    choices = body["n"] if body.get("n") is not None else 1
    valid = all(isinstance(v, int) and not isinstance(v, bool) for v in (completion, choices))
    if not valid or completion < 0 or choices < 1:
        raise ValueError(f"max_tokens must be a non-negative integer and n a positive one, not {completion!r} and {choices!r}")
    # A client may ask for 10**12 tokens: never more than the module takes (and no bucket holds).
    return min(-(-chars // CHARS_PER_TOKEN) + completion * choices, MAX_INTEGER)


def usage_of(answer: Any) -> Optional[int]:
    """``usage.total_tokens`` of an answer or a stream's chunk: an OpenAI SDK object, a dict,
    or the bytes/text of a JSON body or server-sent events (the last count in it)."""
    if isinstance(answer, (bytes, bytearray, str)):
        data = answer.encode() if isinstance(answer, str) else bytes(answer)
        found = _TOTAL_TOKENS.findall(data)
        return int(found[-1]) if found else None
    usage = answer.get("usage") if isinstance(answer, Mapping) else getattr(answer, "usage", None)
    total = usage.get("total_tokens") if isinstance(usage, Mapping) else getattr(usage, "total_tokens", None)
    return total if isinstance(total, int) and not isinstance(total, bool) and total >= 0 else None


class _UsageReader:
    """The usage of a stream, read chunk by chunk. Objects and dicts carry it whole; raw bytes
    or text are read with the end of the previous chunk in front, so a count split across two
    chunks (``"total_tokens": 12`` | ``3``) is read whole, once the next chunk shows its end."""

    TAIL = 64

    def __init__(self) -> None:
        self.used: Optional[int] = None
        self._tail = b""

    def read(self, chunk: Any) -> Optional[int]:
        if isinstance(chunk, (bytes, bytearray, str)):
            data = self._tail + (chunk.encode() if isinstance(chunk, str) else bytes(chunk))
            # A count at the very end may go on in the next chunk: read it from there.
            complete = data.rstrip(b"0123456789")
            found = usage_of(complete)
            self._tail = data[-self.TAIL :]
        else:
            found = usage_of(chunk)
        if found is not None:
            self.used = found
        return found

    def end(self) -> Optional[int]:
        """At the stream's end: a count the last chunk ended with is whole now."""
        found = usage_of(self._tail) if self._tail else None
        if found is not None:
            self.used = found
        return self.used

    @staticmethod
    def final(chunk: Any) -> bool:
        """A chunk whose usage cannot be followed by a larger one: an object or a dict (the
        usage chunk of an OpenAI stream comes last); raw bytes wait for the stream's end."""
        return not isinstance(chunk, (bytes, bytearray, str))


@dataclass(frozen=True)
class _Settlement:
    """What settling ``used`` against ``reserved`` does on each token limit."""

    refund: int
    overage: int

    @staticmethod
    def of(reserved: int, used: int) -> _Settlement:
        return _Settlement(refund=max(0, reserved - used), overage=max(0, used - reserved))


class _ReservationBase:
    def __init__(self, policy: Policy, admitted: Admitted, reserved: int) -> None:
        self.policy = policy
        self.admitted = admitted
        #: The tokens reserved (0 when the limiter was unreachable and ``on_error="allow"``).
        self.reserved = 0 if admitted.unlimited else reserved
        self.settled = False
        #: ``usage.total_tokens`` once known.
        self.used: Optional[int] = None

    @property
    def headers(self) -> Headers:
        """The rate limit headers for the answer."""
        return self.admitted.headers

    def _token_keys(self) -> list[tuple[str, Any]]:
        if self.admitted.unlimited:
            return []
        return [
            (self.policy.key(self.admitted.identity_hash, q), q.limit) for q in self.policy.quotas if q.unit == "tokens"
        ]

    def _usage(self, answer: Any) -> int:
        used = answer if isinstance(answer, int) and not isinstance(answer, bool) else usage_of(answer)
        if used is None or isinstance(used, bool) or used < 0:
            raise ValueError(f"no usage.total_tokens in {type(answer).__name__}: settle with a number instead")
        return min(used, MAX_INTEGER)


class Reservation(_ReservationBase):
    """Tokens reserved for one model call (see the module's documentation)."""

    def __init__(self, limiter: RateLimiter, policy: Policy, admitted: Admitted, reserved: int) -> None:
        super().__init__(policy, admitted, reserved)
        self._limiter = limiter

    def settle(self, answer: Any) -> None:
        """Settles on ``answer``'s usage (or ``answer`` tokens, given a number); once."""
        used = self._usage(answer)
        if self.settled:
            return
        self.settled, self.used = True, used
        settlement = _Settlement.of(self.reserved, used)
        for key, limit in self._token_keys():
            try:
                if settlement.refund:
                    self._limiter.refund(key, limit, settlement.refund)
                elif settlement.overage:
                    self._limiter.check(key, limit, cost=settlement.overage, force=True)
            except FAILURES as e:
                log.warning("could not settle %s tokens on %s (reserved %s): %s", used, key, self.reserved, e)

    def stream(self, chunks: Iterable[T]) -> Iterator[T]:
        """Passes ``chunks`` through, reading the usage as they go; settles when they end."""
        reader = _UsageReader()
        for chunk in chunks:
            used = reader.read(chunk)
            if used is not None and reader.final(chunk):
                self.settle(used)  # as soon as it is known: a consumer may stop reading here
            yield chunk
        if reader.end() is not None and reader.used is not None:
            self.settle(reader.used)

    def cancel(self) -> None:
        """Gives the whole reservation back (the model was not called, or failed)."""
        self.settle(0)

    def __enter__(self) -> Reservation:
        return self

    def __exit__(
        self, kind: Optional[type[BaseException]], error: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        try:
            if error is not None and not self.settled and kind is not GeneratorExit:
                self.cancel()
        finally:
            self.admitted.finish()


class AsyncReservation(_ReservationBase):
    """:class:`Reservation` for asyncio."""

    def __init__(self, limiter: AsyncRateLimiter, policy: Policy, admitted: Admitted, reserved: int) -> None:
        super().__init__(policy, admitted, reserved)
        self._limiter = limiter

    async def settle(self, answer: Any) -> None:
        used = self._usage(answer)
        if self.settled:
            return
        self.settled, self.used = True, used
        settlement = _Settlement.of(self.reserved, used)
        for key, limit in self._token_keys():
            try:
                if settlement.refund:
                    await self._limiter.refund(key, limit, settlement.refund)
                elif settlement.overage:
                    await self._limiter.check(key, limit, cost=settlement.overage, force=True)
            except FAILURES as e:
                log.warning("could not settle %s tokens on %s (reserved %s): %s", used, key, self.reserved, e)

    async def stream(self, chunks: AsyncIterable[T]) -> AsyncIterator[T]:
        reader = _UsageReader()
        async for chunk in chunks:
            used = reader.read(chunk)
            if used is not None and reader.final(chunk):
                await self.settle(used)
            yield chunk
        if reader.end() is not None and reader.used is not None:
            await self.settle(reader.used)

    async def cancel(self) -> None:
        await self.settle(0)

    async def __aenter__(self) -> AsyncReservation:
        return self

    async def __aexit__(
        self, kind: Optional[type[BaseException]], error: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        try:
            # A stream the client left (GeneratorExit) or a request cancelled (the client
            # disconnected, a timeout): the model may have worked, the reservation stays.
            if error is not None and not self.settled and kind not in (GeneratorExit, asyncio.CancelledError):
                await self.cancel()
        finally:
            await self.admitted.afinish()


def _check_policy(policy: Policy) -> Policy:
    if not any(q.unit == "tokens" for q in policy.quotas):
        raise ValueError(f"policy {policy.name!r} has no token limit: give it tokens='90000/minute'")
    return policy


class TokenBudget:
    """Reserves and settles LLM tokens under ``policy`` (which needs a ``tokens`` limit; its
    ``requests`` limits and ``concurrency`` are applied in the same admission)."""

    def __init__(self, limiter: RateLimiter, policy: Policy, on_error: str = "deny", error_retry_after: int = 1) -> None:
        self.policy = _check_policy(policy)
        self.limiter = limiter
        self.admission = Admission(limiter, policy, on_error, error_retry_after)

    def reserve(self, identity: str, tokens: int, cost: int = 1) -> Reservation:
        """Reserves ``tokens`` for ``identity``; raises :class:`RateLimitExceeded` (its answer a
        ``429``), or :class:`RequestRefused` with a ``503`` when Redis cannot be asked and
        ``on_error="deny"``."""
        tokens = amount("tokens", tokens)
        admitted = self.admission.admit(identity, cost=cost, tokens=tokens)
        if admitted.answer is not None:
            raise refused(admitted.answer)
        return Reservation(self.limiter, self.policy, admitted, tokens)


class AsyncTokenBudget:
    """:class:`TokenBudget` on the asyncio client."""

    def __init__(
        self, limiter: AsyncRateLimiter, policy: Policy, on_error: str = "deny", error_retry_after: int = 1
    ) -> None:
        self.policy = _check_policy(policy)
        self.limiter = limiter
        self.admission = AsyncAdmission(limiter, policy, on_error, error_retry_after)

    async def reserve(self, identity: str, tokens: int, cost: int = 1) -> AsyncReservation:
        tokens = amount("tokens", tokens)
        admitted = await self.admission.admit(identity, cost=cost, tokens=tokens)
        if admitted.answer is not None:
            raise refused(admitted.answer)
        return AsyncReservation(self.limiter, self.policy, admitted, tokens)
