"""The original client: sends requests to the model API and says how many more it may send, or
waits as ``Retry-After`` asks.

    python python/examples/client.py --url http://127.0.0.1:5000/predict --key demo -n 12
    python python/examples/client.py --url http://127.0.0.1:5000/predict --key demo -n 12 --wait

Only the standard library: any Python 3.9+.
"""

from __future__ import annotations

import argparse
import json
import time
import urllib.error
import urllib.request
from typing import Optional


def send(url: str, key: str, text: str) -> tuple[int, dict[str, str], dict[str, object]]:
    request = urllib.request.Request(
        url,
        data=json.dumps({"text": text}).encode(),
        headers={"Content-Type": "application/json", "X-API-Key": key},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, dict(answer.headers), json.loads(answer.read() or b"{}")
    except urllib.error.HTTPError as refused:
        body = refused.read()
        return refused.code, dict(refused.headers), json.loads(body) if body else {}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:5000/predict")
    parser.add_argument("--key", default="demo")
    parser.add_argument("-n", type=int, default=12, help="how many requests to send")
    parser.add_argument("--text", default="what a great model")
    parser.add_argument("--wait", action="store_true", help="on 429, wait as Retry-After says and try again")
    args = parser.parse_args(argv)
    sent = 0
    while sent < args.n:
        status, headers, body = send(args.url, args.key, args.text)
        if status == 200:
            sent += 1
            remaining, reset = headers.get("X-RateLimit-Remaining"), headers.get("X-RateLimit-Reset")
            print(f"{sent}: {body.get('label')}. You can send {remaining} more requests in the next {reset} seconds.")
        elif status == 429 and "Retry-After" in headers:
            wait = int(headers["Retry-After"])
            if not args.wait:
                print(f"Rate limited: try again in {wait} seconds.")
                return 1
            print(f"Rate limited: waiting {wait} seconds, as Retry-After asks.")
            time.sleep(wait)
        else:
            print(f"{status}: {body}")
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
