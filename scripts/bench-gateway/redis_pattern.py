#!/usr/bin/env python3
"""The Redis side of one rate limit decision, alone, for scripts/bench-gateway.sh: what each
decision sends to Redis, from CONNECTIONS connections, each sending its next decision when the
last one was answered (as a rate limit service does per request), RATE decisions a second in
all, for SECONDS seconds.

    redis_pattern.py PORT MODE DESCRIPTORS SECONDS RATE [CONNECTIONS]

The rate is fixed so that both patterns are compared at the same load: Redis's CPU per
decision falls as its load rises (more commands per wake-up of its event loop), so a pattern
that a slower client drives at a lower rate would look dearer than it is.

MODE:
  reference  envoyproxy/ratelimit's pattern: per descriptor `INCRBY key 1` and `EXPIRE key 60`,
             all of a decision's commands in one pipelined write (its default, no implicit
             pipelining across requests)
  module     ours: one `RL.CHECK key limit window COST 1 BURST b` (one descriptor) or one
             `RL.CHECKALL n key... (limit window cost burst)...`, as the gateway sends them

Prints "decisions=N commands=M". The caller reads redis-server's CPU time around the run; the
client is the same for both modes, so the difference is Redis's. Standard library only.
"""

import asyncio
import sys
import time


def resp(*args: str) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def decision(mode: str, descriptors: int, conn: int) -> tuple[bytes, int]:
    """The bytes of one decision and how many replies it gets."""
    keys = [f"bench:{mode}:{{d}}:desc{i}:conn{conn}" for i in range(descriptors)]
    if mode == "reference":
        commands = []
        for key in keys:
            commands.append(resp("INCRBY", key, "1"))
            commands.append(resp("EXPIRE", key, "60"))
        return b"".join(commands), len(commands)
    limit, window, burst = "1000000000", "1", "1000000000"
    if descriptors == 1:
        return resp("RL.CHECK", keys[0], limit, window, "COST", "1", "BURST", burst), 1
    args = ["RL.CHECKALL", str(descriptors), *keys]
    for _ in keys:
        args += [limit, window, "1", burst]
    return resp(*args), 1


async def read_reply(reader: asyncio.StreamReader) -> None:
    line = await reader.readline()
    kind = line[:1]
    if kind == b"-":
        raise RuntimeError(line.decode().strip())
    if kind == b"*":
        for _ in range(int(line[1:])):
            await read_reply(reader)
    elif kind == b"$":
        size = int(line[1:])
        if size >= 0:
            await reader.readexactly(size + 2)


async def connection(
    port: int, mode: str, descriptors: int, conn: int, until: float, interval: float, counts: list[int]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    payload, replies = decision(mode, descriptors, conn)
    # Spread the connections' send slots over one interval.
    slot = time.monotonic() + interval * conn / 32
    while time.monotonic() < until:
        wait = slot - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        # A slot missed by far (the client was late) is not made up in a burst.
        slot = max(slot + interval, time.monotonic() - 4 * interval)
        writer.write(payload)
        await writer.drain()
        for _ in range(replies):
            await read_reply(reader)
        counts[0] += 1
        counts[1] += replies
    writer.close()


async def main() -> None:
    port, mode, descriptors, seconds = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    rate = float(sys.argv[5])
    connections = int(sys.argv[6]) if len(sys.argv) > 6 else 32
    if mode not in ("reference", "module"):
        raise SystemExit(f"unknown mode {mode}")
    counts = [0, 0]
    until = time.monotonic() + seconds
    interval = connections / rate
    await asyncio.gather(
        *(connection(port, mode, descriptors, c, until, interval, counts) for c in range(connections))
    )
    print(f"decisions={counts[0]} commands={counts[1]}")


asyncio.run(main())
