"""Two limits on one route, ten requests from one key: how much of each limit is spent? Right
is what was admitted, on every limit: a request refused by one limit must cost nothing on the
other. A limiter that charges the limits one after another (Flask-Limiter and slowapi, on the
`limits` library) leaves refused requests charged on a limit that did not refuse them, in one
order or the other. Read from Redis itself.

    python python/bench/two_limits.py redis://127.0.0.1:6379/
"""

import importlib
import os
import sys
from typing import Any

import redis

CONFIGS = ["10/hour;3/minute", "5/minute;2/hour"]
NAMES = {
    ("flask", "ours"): "Flask + ml-api-rate-limiter",
    ("flask", "theirs"): "Flask + Flask-Limiter",
    ("fastapi", "ours"): "FastAPI + ml-api-rate-limiter",
    ("fastapi", "theirs"): "FastAPI + slowapi",
}


def their_spent(r: redis.Redis, limit: str) -> int:
    """The fixed-window counter of `limit` (`10/hour` is stored as `.../10/1/hour`)."""
    count, unit = limit.split("/")
    keys = [k for k in r.scan_iter("LIMITS:*") if k.endswith(f"/{count}/1/{unit}".encode())]
    return sum(int(r.get(k) or 0) for k in keys)


def our_spent(url: str, limits: list[str], identity: str) -> list[int]:
    from ml_api_rate_limiter import Policy, RateLimiter

    policy = Policy("predict", requests=limits)
    limiter = RateLimiter.from_url(url)
    spent = []
    for quota in policy.quotas:
        peek = limiter.peek(policy.key(policy.identity_hash(identity), quota), quota.limit)
        spent.append(quota.limit.limit - (peek.remaining + 1 if peek.allowed else 0))
    return spent


def send_ten(framework: str, apps: Any) -> list[int]:
    headers = {"X-API-Key": "bench"}
    if framework == "flask":
        client = apps.flask_app().test_client()
        return [client.post("/predict", headers=headers).status_code for _ in range(10)]
    from starlette.testclient import TestClient

    with TestClient(apps.fastapi_app()) as client:
        return [client.post("/predict", headers=headers).status_code for _ in range(10)]


def main(url: str) -> None:
    r = redis.Redis.from_url(url)
    print("| app | limits | answers to 10 requests | spent on each limit (right: the admitted) |")
    print("|---|---|---|---|")
    for config in CONFIGS:
        limits = config.split(";")
        for framework in ("flask", "fastapi"):
            for variant in ("ours", "theirs"):
                r.flushall()
                os.environ.update(REDIS_URL=url, BENCH_LIMITS=config, BENCH_VARIANT=variant)
                import apps

                importlib.reload(apps)
                codes = send_ten(framework, apps)
                if variant == "ours":
                    spent = our_spent(url, limits, "key:bench")
                else:
                    spent = [their_spent(r, limit) for limit in limits]
                each = ", ".join(f"{limit}: {n}" for limit, n in zip(limits, spent))
                wrong = " **(refused requests charged)**" if any(n > codes.count(200) for n in spent) else ""
                print(
                    f"| {NAMES[(framework, variant)]} | {config.replace(';', ' + ')} | "
                    f"{codes.count(200)} × 200, {codes.count(429)} × 429 | {each}{wrong} |"
                )


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main(sys.argv[1])
