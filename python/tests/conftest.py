"""The servers the tests run against, started by the repository's one harness
(`gateway/tests/python_package.rs`): `RL_TEST_REDIS_URLS` names one Redis per backend
(`module=redis://...` with the module, `functions=redis://...` Redis 7 without it, where the
client loads the library, `scripts=redis://...` Redis 6.2, where the library runs as a script);
`RL_TEST_ADMIN_URLS` names the same servers as their default (unrestricted) user;
`RL_TEST_MODEL_URL` is the demo model (OpenAI's chat completions API).

With `RL_TEST_ACL=1` the harness makes `RL_TEST_REDIS_URLS` a user restricted to the README's
ACL (the limiter's commands, keys `rl:*`): the clients under test connect there (`url`), while
the tests' own setup and inspection (`FLUSHALL`, keys of the wrong type, `CLIENT PAUSE`, reading
what is stored) go through `admin`. Outside that mode both name the same default user.
"""

from __future__ import annotations

import os
import socket
from typing import Iterator

import pytest
import redis

from ml_api_rate_limiter import RateLimiter


def urls_of(variable: str) -> dict[str, str]:
    """`RL_TEST_REDIS_URLS` / `RL_TEST_ADMIN_URLS`: `module=url,functions=url,scripts=url`."""
    text = os.environ.get(variable, "")
    found = dict(part.split("=", 1) for part in text.split(",") if part)
    if not found:
        raise RuntimeError(f"{variable} is not set: run these tests through `cargo test -p gateway --test python_package`")
    return found


def servers() -> dict[str, str]:
    """The URL of each backend's server for the clients under test (a restricted user in ACL mode)."""
    return urls_of("RL_TEST_REDIS_URLS")


def admin_servers() -> dict[str, str]:
    """The URL of each backend's server as its default user, for the tests' own setup and inspection."""
    found = urls_of("RL_TEST_ADMIN_URLS")
    if sorted(found) != sorted(servers()):
        raise RuntimeError(f"RL_TEST_ADMIN_URLS names {sorted(found)}, RL_TEST_REDIS_URLS {sorted(servers())}")
    return found


def admin_client(backend: str) -> redis.Redis:
    """The default user on `backend`'s server (close it after use)."""
    return redis.Redis.from_url(admin_servers()[backend])


def model_url() -> str:
    url = os.environ.get("RL_TEST_MODEL_URL")
    if not url:
        raise RuntimeError("RL_TEST_MODEL_URL is not set: run these tests through `cargo test -p gateway --test python_package`")
    return url


def topology(variable: str) -> dict[str, str]:
    """`RL_TEST_CLUSTERS` / `RL_TEST_SENTINELS`: `module=url;functions=url`, as the default
    user in every mode (a restricted user across a Cluster's nodes or a Sentinel group's
    servers is not set up)."""
    text = os.environ.get(variable, "")
    found = dict(part.split("=", 1) for part in text.split(";") if part)
    if not found:
        raise RuntimeError(f"{variable} is not set: run these tests through `cargo test -p gateway --test python_package`")
    return found


BACKENDS = sorted(servers())


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def admin(backend: str) -> Iterator[redis.Redis]:
    """The backend's server as its default user: for the test's setup and inspection, never
    for the code under test."""
    client = admin_client(backend)
    yield client
    client.close()


@pytest.fixture
def url(backend: str, admin: redis.Redis) -> str:
    """The backend's server for the clients under test, emptied first (by `admin`)."""
    admin.flushall()
    return servers()[backend]


@pytest.fixture
def limiter(url: str) -> Iterator[RateLimiter]:
    """A sync client of the backend's server, closed after the test."""
    client = RateLimiter.from_url(url)
    yield client
    client.close()


def closed_port_url() -> str:
    """A Redis URL where nothing listens (a port just freed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"redis://127.0.0.1:{port}/"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
