"""A Flask model API protected as the original project intended: every API key may call the
model 10 times a minute and 100 times a day (both charged, or neither), health checks are free,
and a Redis outage answers 503 rather than 500.

    pip install './python[flask]'
    REDIS_URL=redis://127.0.0.1:6379/ python python/examples/flask_model_api.py   # port 5000
    curl -X POST localhost:5000/predict -H 'X-API-Key: demo' -d '{"text": "a great model"}'

``PORT`` moves it. Works on Redis with the ratelimit module, or any Redis 7 / Valkey (the
package loads its Functions library), or Redis 6.2 (as a script).
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, request

from ml_api_rate_limiter import RateLimiter
from ml_api_rate_limiter.flask import FlaskRateLimiter, header_or_address

POSITIVE = {"good", "great", "excellent", "love", "wonderful", "best", "happy"}
NEGATIVE = {"bad", "terrible", "awful", "hate", "worst", "poor", "sad"}

app = Flask(__name__)
limiter = FlaskRateLimiter(
    app,
    RateLimiter.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/"), timeout=0.5),
    key=header_or_address("X-API-Key"),
    on_error="deny",
)


def sentiment(text: str) -> dict[str, Any]:
    words = [w.strip(".,!?").lower() for w in text.split()]
    score = sum(w in POSITIVE for w in words) - sum(w in NEGATIVE for w in words)
    label = "positive" if score > 0 else "negative" if score < 0 else "neutral"
    return {"label": label, "score": score}


@app.post("/predict")
@limiter.limit("10/minute", "100/day")
def predict() -> Any:
    body = request.get_json(force=True, silent=True)
    text = body.get("text") if isinstance(body, dict) else None
    if not isinstance(text, str):
        return {"error": {"type": "bad_request", "message": 'send {"text": "..."}'}}, 400
    return sentiment(text)


@app.get("/health")
@limiter.exempt
def health() -> Any:
    return {"ok": True}


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(os.environ.get("PORT", "5000")))
