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
from typing import Sequence, Union

Arg = Union[str, int, bytes]

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
class Call:
    """One module command: its name, its keys and the arguments after them."""

    name: str
    keys: tuple[str, ...]
    args: tuple[Arg, ...]

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


# redis-py drops the "ERR " of an error reply and raises NOSCRIPT and NOPERM as classes of
# their own; these read both spellings.


def is_unknown_command(error: BaseException) -> bool:
    """The server does not know the command (the module or Functions missing)."""
    return str(error).lower().removeprefix("err ").startswith("unknown command")


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


def check_args(limit: int, window: int, cost: int, burst: int, keep: int | None, force: bool) -> tuple[Arg, ...]:
    args: list[Arg] = [limit, window, "COST", cost, "BURST", burst]
    if keep is not None:
        args += ["KEEP", keep]
    if force:
        args.append("FORCE")
    return tuple(args)


def checkall_args(specs: Sequence[tuple[int, int, int, int]]) -> tuple[Arg, ...]:
    return tuple(word for spec in specs for word in spec)
