"""Redis Cluster and Sentinel, from their URLs: commands routed to the node owning their slot,
and a Sentinel failover that costs no request (none lost, none charged twice), on servers with
the module and without it (the library, as a function or as a script)."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis

from ml_api_rate_limiter import AsyncRateLimiter, Policy, RateLimiter, TokenBudget

from conftest import topology

# As the default user in every mode (see `conftest.topology`): the clients under test here also
# empty the servers (FLUSHALL) themselves.
CLUSTERS = topology("RL_TEST_CLUSTERS")
SENTINELS = topology("RL_TEST_SENTINELS")
CASES = [("module", "auto"), ("functions", "auto"), ("functions", "scripts")]


@pytest.mark.parametrize("servers,backend", CASES)
def test_a_cluster_routes_every_call_to_its_slot(servers: str, backend: str) -> None:
    limiter = RateLimiter.from_url(CLUSTERS[servers], backend=backend)
    limiter.redis.flushall()
    users = [f"user{i}" for i in range(30)]  # spread over the three primaries' slots
    for _ in range(2):
        for user in users:
            assert limiter.check(f"rl:{{{user}}}:rpm", "2/minute").allowed
    assert not any(limiter.check(f"rl:{{{user}}}:rpm", "2/minute").allowed for user in users)
    assert limiter.backend == (servers if backend == "auto" else backend)
    budget = TokenBudget(limiter, Policy("chat", requests="5/minute", tokens="100/minute", concurrency=2))
    with budget.reserve("alice", 60) as reservation:
        reservation.settle(10)
    nodes = {limiter.redis.keyslot(f"rl:{{{user}}}:rpm") // 5462 for user in users}
    assert nodes == {0, 1, 2}, "the keys sit on every primary"
    limiter.close()


@pytest.mark.parametrize("servers,backend", CASES)
def test_the_asyncio_client_on_a_cluster(servers: str, backend: str) -> None:
    async def run() -> list[bool]:
        limiter = AsyncRateLimiter.from_url(CLUSTERS[servers], backend=backend)
        await limiter.redis.flushall()
        answers = [(await limiter.check(f"rl:{{u{i % 10}}}:a", "3/minute")).allowed for i in range(40)]
        await limiter.close()
        return answers

    answers = asyncio.run(run())
    assert sum(answers) == 30, "three each for ten users"


def sentinels_and_service(url: str) -> tuple[list[redis.Redis], str]:
    hosts, service = url.split("://", 1)[1].split("/", 1)
    return [redis.Redis(host=h.rsplit(":", 1)[0], port=int(h.rsplit(":", 1)[1])) for h in hosts.split(",")], service


def primary_of(url: str) -> redis.Redis:
    sentinels, service = sentinels_and_service(url)
    address = sentinels[0].execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", service)
    return redis.Redis(host=address[0].decode(), port=int(address[1]))


def failover(url: str) -> None:
    """`SENTINEL FAILOVER`, once the replica has every write; returns when the new primary is
    named by the sentinels and says it is one."""
    old = primary_of(url)
    old.execute_command("WAIT", 1, 2000)
    old_port = old.connection_pool.connection_kwargs["port"]
    sentinels, service = sentinels_and_service(url)
    sentinels[0].execute_command("SENTINEL", "FAILOVER", service)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        named = {int(s.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", service)[1]) for s in sentinels}
        if len(named) == 1 and old_port not in named:
            new = primary_of(url)
            if new.execute_command("ROLE")[0] == b"master":
                return
        time.sleep(0.1)
    raise AssertionError("no failover within 30 s")


@pytest.mark.parametrize("servers,backend", CASES)
def test_a_sentinel_failover_costs_no_request(servers: str, backend: str) -> None:
    url = SENTINELS[servers]
    limiter = RateLimiter.from_url(url, backend=backend, timeout=2)
    limiter.redis.flushall()
    for left in (9, 8, 7):
        assert limiter.check("rl:{a}:rpm", "10/hour").remaining == left
    failover(url)
    # The first call after the failover meets the old primary, now a replica: refused there
    # (READONLY, nothing ran), it goes once more to the new primary, where a script may be
    # missing (NOSCRIPT, nothing ran): loaded, and sent once more. Charged once.
    assert limiter.check("rl:{a}:rpm", "10/hour").remaining == 6
    assert limiter.check("rl:{a}:rpm", "10/hour").remaining == 5
    assert limiter.backend == (servers if backend == "auto" else backend)
    limiter.close()
