"""The same small model API, in Flask and in FastAPI, limited by this package, by Flask-Limiter
/ slowapi (Redis storage), or not at all: ``BENCH_VARIANT`` = ``ours``, ``theirs`` or ``none``;
``REDIS_URL``; ``BENCH_LIMITS`` (``;``-separated, default two limits nothing reaches).

    gunicorn -w 2 'apps:flask_app()'              (in python/bench)
    uvicorn --factory apps:fastapi_app
"""


import os
from typing import Any

LIMITS = os.environ.get("BENCH_LIMITS", "1000000000/minute;1000000000/hour").split(";")
VARIANT = os.environ.get("BENCH_VARIANT", "none")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/")
KEY_HEADER = "X-API-Key"


def flask_app() -> Any:
    from flask import Flask, request

    app = Flask(__name__)

    def predict() -> Any:
        return {"label": "positive"}

    if VARIANT == "ours":
        from ml_api_rate_limiter import RateLimiter
        from ml_api_rate_limiter.flask import FlaskRateLimiter, header_or_address

        ours = FlaskRateLimiter(app, RateLimiter.from_url(REDIS_URL), key=header_or_address(KEY_HEADER))
        predict = ours.limit(*LIMITS)(predict)
    elif VARIANT == "theirs":
        from flask_limiter import Limiter

        theirs = Limiter(
            key_func=lambda: request.headers.get(KEY_HEADER, request.remote_addr or ""),
            app=app,
            storage_uri=REDIS_URL,
            headers_enabled=True,
        )
        predict = theirs.limit(";".join(LIMITS))(predict)
    app.add_url_rule("/predict", "predict", predict, methods=["POST"])
    return app


def fastapi_app() -> Any:
    from fastapi import FastAPI, Request, Response

    app = FastAPI()
    if VARIANT == "ours":
        from ml_api_rate_limiter import AsyncRateLimiter, Policy
        from ml_api_rate_limiter.asgi import RateLimitMiddleware, header_or_client

        app.add_middleware(
            RateLimitMiddleware,
            limiter=AsyncRateLimiter.from_url(REDIS_URL),
            policy=Policy("predict", requests=LIMITS),
            key=header_or_client(KEY_HEADER),
            paths=["/predict"],
        )

        @app.post("/predict")
        async def predict() -> dict[str, str]:
            return {"label": "positive"}

    elif VARIANT == "theirs":
        from slowapi import Limiter, _rate_limit_exceeded_handler
        from slowapi.errors import RateLimitExceeded

        def key(request: Request) -> str:
            return request.headers.get(KEY_HEADER) or (request.client.host if request.client else "")

        theirs = Limiter(key_func=key, storage_uri=REDIS_URL, headers_enabled=True)
        app.state.limiter = theirs
        app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)  # type: ignore[arg-type]

        @app.post("/predict")
        @theirs.limit(";".join(LIMITS))
        async def predict(request: Request, response: Response) -> dict[str, str]:
            return {"label": "positive"}

    else:

        @app.post("/predict")
        async def predict() -> dict[str, str]:
            return {"label": "positive"}

    return app
