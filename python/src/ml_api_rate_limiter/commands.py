"""The command lines of every call, written once for the sync and the asyncio clients, and how
each backend sends them.

Three backends answer the same arguments with the same replies and keep the same state:

- ``module``: the ``ratelimit`` Redis module's commands (``RL.CHECK key ...``);
- ``functions``: the Functions library shipped in this package (the repository's one
  ``functions/ratelimit.lua``), as ``FCALL rl_check 1 key ...``; loaded with
  ``FUNCTION LOAD REPLACE`` where it is missing or older;
- ``scripts``: the same library as a script (``EVALSHA sha 1 key rl_check ...``) where Redis
  has no Functions (6.2) or refuses them; a ``NOSCRIPT`` (after a failover or a
  ``SCRIPT FLUSH``) loads it again and sends the call once more, which is safe because a
  ``NOSCRIPT`` call ran nothing.

``auto`` (the default) picks the first that answers, in that order, as the gateway does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Any, Callable, Generic, Optional, Sequence, TypeVar, Union

from .limits import Limit, as_limit
from .replies import (
    AcquireResult,
    CheckAllResult,
    CheckResult,
    RefundResult,
    ThrottleResult,
    decode_count,
    decode_flag,
)

Arg = Union[str, int, bytes]
LimitLike = Union[Limit, str]
R = TypeVar("R")

#: The module command each library function stands for.
FUNCTIONS = {
    "RL.CHECK": "rl_check",
    "RL.CHECKALL": "rl_checkall",
    "RL.PEEK": "rl_peek",
    "RL.REFUND": "rl_refund",
    "RL.RESET": "rl_reset",
    "CL.THROTTLE": "cl_throttle",
    "RL.ACQUIRE": "rl_acquire",
    "RL.RELEASE": "rl_release",
    "RL.RENEW": "rl_renew",
}

BACKENDS = ("auto", "module", "functions", "scripts")


def library_source() -> str:
    """The Functions library as shipped in this package."""
    return resources.files(__package__).joinpath("ratelimit.lua").read_text(encoding="utf-8")


def library_version(source: str) -> int:
    """The library's ``VERSION``, which ``FCALL_RO rl_version 0`` answers."""
    match = re.search(r"^local VERSION = '?(\d+)'?", source, re.MULTILINE)
    if match is None:
        raise RuntimeError("the shipped ratelimit.lua has no VERSION")
    return int(match.group(1))


def script_source(source: str) -> str:
    """The library as a script for ``EVAL``: its ``#!lua`` line blanked (lines keep their numbers)."""
    first, _, rest = source.partition("\n")
    return "\n" + rest if first.startswith("#!") else source


@dataclass(frozen=True)
class Call(Generic[R]):
    """One module command: its name, its keys, the arguments after them, and how its reply
    is read."""

    name: str
    keys: tuple[str, ...]
    args: tuple[Arg, ...]
    decode: Callable[[Any], R]

    def line(self, backend: str, sha: str = "") -> list[Arg]:
        """The words sent for this call on ``backend`` (``module``, ``functions``, ``scripts``)."""
        if backend == "module":
            numkeys: tuple[Arg, ...] = (len(self.keys),) if self.name == "RL.CHECKALL" else ()
            return [self.name, *numkeys, *self.keys, *self.args]
        function = FUNCTIONS[self.name]
        if backend == "functions":
            head = "FCALL_RO" if self.name == "RL.PEEK" else "FCALL"
            return [head, function, len(self.keys), *self.keys, *self.args]
        return ["EVALSHA", sha, len(self.keys), *self.keys, function, *self.args]


# --- every command's call, built once for the sync and the asyncio clients -------------------


def check(key: str, limit: LimitLike, cost: int, keep: Optional[int], force: bool) -> Call[CheckResult]:
    q = as_limit(limit)
    args: list[Arg] = [q.limit, q.window, "COST", cost, "BURST", q.burst]
    if keep is not None:
        args += ["KEEP", keep]
    if force:
        args.append("FORCE")
    return Call("RL.CHECK", (key,), tuple(args), CheckResult.decode)


def check_all(checks: Sequence[tuple[str, LimitLike, int]]) -> Call[CheckAllResult]:
    args: list[Arg] = []
    for _, limit, cost in checks:
        q = as_limit(limit)
        args += [q.limit, q.window, cost, q.burst]
    return Call("RL.CHECKALL", tuple(key for key, _, _ in checks), tuple(args), CheckAllResult.decode)


def peek(key: str, limit: LimitLike) -> Call[CheckResult]:
    q = as_limit(limit)
    return Call("RL.PEEK", (key,), (q.limit, q.window, "BURST", q.burst), lambda v: CheckResult.decode(v, "RL.PEEK"))


def refund(key: str, limit: LimitLike, amount: int) -> Call[RefundResult]:
    q = as_limit(limit)
    return Call("RL.REFUND", (key,), (q.limit, q.window, amount, "BURST", q.burst), RefundResult.decode)


def reset(key: str) -> Call[bool]:
    return Call("RL.RESET", (key,), (), lambda v: decode_count("RL.RESET", v) > 0)


def throttle(key: str, max_burst: int, count_per_period: int, period: int, quantity: int) -> Call[ThrottleResult]:
    return Call("CL.THROTTLE", (key,), (max_burst, count_per_period, period, quantity), ThrottleResult.decode)


def acquire(key: str, max_in_flight: int, lease_ms: int, lease_id: str) -> Call[AcquireResult]:
    return Call("RL.ACQUIRE", (key,), (max_in_flight, lease_ms, "ID", lease_id), AcquireResult.decode)


def release(key: str, lease_id: str) -> Call[bool]:
    return Call("RL.RELEASE", (key,), (lease_id,), lambda v: decode_flag("RL.RELEASE", v))


def renew(key: str, lease_id: str, lease_ms: int) -> Call[bool]:
    return Call("RL.RENEW", (key,), (lease_id, lease_ms), lambda v: decode_flag("RL.RENEW", v))


# redis-py drops the "ERR " of an error reply and raises NOSCRIPT and NOPERM as classes of
# their own; these read both spellings.


def is_unknown_command(error: BaseException) -> bool:
    """The server does not know the command (the module or Functions missing); on a Cluster,
    redis-py says so itself, finding no key positions for it in ``COMMAND``."""
    text = str(error)
    return text.lower().removeprefix("err ").startswith("unknown command") or text.endswith(
        "command doesn't exist in Redis commands"
    )


def is_missing_library(error: BaseException) -> bool:
    """The library is not loaded (``Function not found``) or the script not cached (``NOSCRIPT``)."""
    text = str(error)
    return type(error).__name__ == "NoScriptError" or "Function not found" in text or text.startswith("NOSCRIPT")


def is_refused(error: BaseException) -> bool:
    """This Redis user may not run the command (or one the library calls inside)."""
    text = str(error)
    return (
        type(error).__name__ == "NoPermissionError"
        or text.startswith("NOPERM")
        or "can't run this command" in text
        or text.startswith("ACL failure in script")
    )


#: redis-py's words for a Sentinel-managed connection that found its primary demoted to a
#: replica (a ``READONLY`` reply, or the unblocking at a coordinated failover): the command
#: did not run, so it is safe to send once more, to the new primary.
DEMOTED_PRIMARY = "The previous master is now a slave"


def is_demoted_primary(error: BaseException) -> bool:
    return str(error) == DEMOTED_PRIMARY
