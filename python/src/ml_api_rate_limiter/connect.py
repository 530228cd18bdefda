"""Clients from URLs, for the sync and the asyncio limiter alike:

- ``redis://``, ``rediss://``, ``unix://``: one server (redis-py's own URL format);
- ``redis+cluster://host:port`` (``rediss+cluster://``): any node of a Redis Cluster; commands
  go to the node owning their keys' slot;
- ``redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db]``
  (``rediss+sentinel://``): the primary that the Sentinels name for ``service``, found again
  after a failover. The password is the data nodes'; a Sentinel's own password goes in
  ``sentinel_password=``.

Every call is bounded by ``timeout`` (connect, send, answer), and redis-py's retries are off: a
retried check could charge twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional
from urllib.parse import unquote

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel
from redis.backoff import NoBackoff


@dataclass(frozen=True)
class SentinelTarget:
    nodes: list[tuple[str, int]]
    service: str
    tls: bool
    options: dict[str, Any] = field(default_factory=dict)


def parse_sentinel(url: str) -> SentinelTarget:
    url = url.split("?", 1)[0].split("#", 1)[0]
    scheme, _, rest = url.partition("://")
    auth, at, hosts_and_path = rest.rpartition("@")
    if not at:
        auth, hosts_and_path = "", rest
    hosts, _, path = hosts_and_path.partition("/")
    parts = [p for p in path.split("/") if p]
    if not parts:
        raise ValueError(f"{url!r}: name the service, as in redis+sentinel://host:26379/mymaster")
    nodes: list[tuple[str, int]] = []
    for host in hosts.split(","):
        if host.startswith("["):  # [::1]:26379
            name, _, after = host[1:].partition("]")
            nodes.append((name, int(after[1:]) if after.startswith(":") else 26379))
            continue
        name, colon, port = host.rpartition(":")
        nodes.append((name, int(port)) if colon else (host, 26379))
    options: dict[str, Any] = {}
    if len(parts) > 1:
        options["db"] = int(parts[1])
    if auth:
        user, colon, password = auth.partition(":")
        if colon:
            options["password"] = unquote(password)
            if user:
                options["username"] = unquote(user)
        else:
            options["password"] = unquote(user)
    return SentinelTarget(nodes, unquote(parts[0]), scheme.startswith("rediss"), options)


def _options(timeout: float, retry: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout, "retry": retry}
    options.update(kwargs)
    return options


def _sentinel_options(target: SentinelTarget, timeout: float, password: Optional[str]) -> dict[str, Any]:
    """How the Sentinels themselves are asked: bounded, over TLS for ``rediss+sentinel``."""
    options: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout, "password": password}
    if target.tls:
        options["ssl"] = True
    return options


def sync_client(url: str, timeout: float, **kwargs: Any) -> Any:
    """A redis-py client (``Redis``, ``RedisCluster`` or a Sentinel's primary) for ``url``."""
    from redis.retry import Retry

    options = _options(timeout, Retry(NoBackoff(), 0), kwargs)
    if "+cluster://" in url:
        # RedisCluster retries a timed-out command on its own (10 times by default) unless
        # told not to: a check Redis ran and answered late would be charged again.
        return redis.RedisCluster.from_url(url.replace("+cluster", "", 1), **options)
    if "+sentinel://" in url:
        target = parse_sentinel(url)
        sentinel_password: Optional[str] = options.pop("sentinel_password", None)
        sentinels = redis.sentinel.Sentinel(target.nodes, sentinel_kwargs=_sentinel_options(target, timeout, sentinel_password))
        if target.tls:
            options["ssl"] = True
        return sentinels.master_for(target.service, **{**target.options, **options})
    return redis.Redis.from_url(url, **options)


def async_client(url: str, timeout: float, **kwargs: Any) -> Any:
    """The ``redis.asyncio`` client for ``url``."""
    from redis.asyncio.retry import Retry

    options = _options(timeout, Retry(NoBackoff(), 0), kwargs)
    if "+cluster://" in url:
        return redis.asyncio.RedisCluster.from_url(url.replace("+cluster", "", 1), **options)
    if "+sentinel://" in url:
        target = parse_sentinel(url)
        sentinel_password: Optional[str] = options.pop("sentinel_password", None)
        sentinels = redis.asyncio.sentinel.Sentinel(
            target.nodes, sentinel_kwargs=_sentinel_options(target, timeout, sentinel_password)
        )
        if target.tls:
            options["ssl"] = True
        return sentinels.master_for(target.service, **{**target.options, **options})
    return redis.asyncio.Redis.from_url(url, **options)
