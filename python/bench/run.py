"""`make bench-python`: the Python package measured in one run, on servers started here.

1. Time per call: the client's `check` next to a bare redis-py `INCR` round trip (module, and
   the Functions library on a Redis without it), alternating rounds, medians.
2. Apps under wrk: the same small Flask app (gunicorn, 2 sync workers) and FastAPI app
   (uvicorn, 1 worker) with no limiter, limited by this package, and by Flask-Limiter / slowapi
   with Redis storage; two limits nothing reaches, one API key. Variants alternate within each
   round (odd rounds forward, even rounds backward); the table shows medians over the rounds.
3. Correctness: two limits, ten requests (`two_limits.py`).

    python python/bench/run.py [--rounds N] [--duration S] [--quick]

Needs redis-server, wrk, the release module (target/release/librl.so), and in this Python:
the package with its test extras, flask-limiter, slowapi, gunicorn.
"""

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PY = sys.executable
WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = '{"text": "what a great model"}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-API-Key"] = "bench"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(module: bool, workdir: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    args = ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no", "--dir", workdir]
    if module:
        args += ["--loadmodule", str(ROOT / os.environ.get("CARGO_TARGET_DIR", "target") / "release/librl.so")]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), 0.1).close()
            break
        except OSError:
            time.sleep(0.05)
    return process, f"redis://127.0.0.1:{port}/"


def start_app(framework: str, variant: str, redis_url: str, port: int) -> subprocess.Popen:
    env = {**os.environ, "BENCH_VARIANT": variant, "REDIS_URL": redis_url}
    if framework == "flask":
        args = [PY, "-m", "gunicorn", "-w", "2", "-b", f"127.0.0.1:{port}", "--log-level", "warning", "apps:flask_app()"]
    else:
        args = [PY, "-m", "uvicorn", "--factory", "apps:fastapi_app", "--port", str(port), "--log-level", "warning"]
    process = subprocess.Popen(args, cwd=HERE, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            request = urllib.request.Request(f"http://127.0.0.1:{port}/predict", data=b"{}", method="POST",
                                             headers={"Content-Type": "application/json", "X-API-Key": "warm"})
            with urllib.request.urlopen(request, timeout=1) as answer:
                if answer.status == 200:
                    return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"{framework} {variant} did not start")


def wrk(port: int, duration: int, script: str) -> tuple[float, float, int]:
    out = subprocess.run(
        ["wrk", "-t1", "-c16", f"-d{duration}s", "--latency", "-s", script, f"http://127.0.0.1:{port}/predict"],
        capture_output=True, text=True, check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return rps, float(p99.group(1)) * scale[p99.group(2)] if p99 else float("nan"), int(non2xx.group(1)) if non2xx else 0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="1 round of 2 s: proves every part runs")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.duration = 1, 2
    workdir = tempfile.mkdtemp(prefix="bench-python-")
    servers = [start_redis(True, workdir), start_redis(False, workdir)]
    (_, module_url), (_, plain_url) = servers
    try:
        print("## Client: time per call (µs, median of rounds)\n")
        print("| backend | bare redis-py INCR | client.check | ratio |\n|---|---|---|---|")
        for url in (module_url, plain_url):
            calls = "1000" if args.quick else "5000"
            out = subprocess.run([PY, str(HERE / "client_calls.py"), url, "auto", calls, "7"],
                                 capture_output=True, text=True, check=True).stdout
            fields = dict(part.split("=") for part in out.split())
            print(f"| {fields['backend']} | {fields['incr_us']} | {fields['check_us']} | {fields['ratio']}x |")
        script = os.path.join(workdir, "post.lua")
        Path(script).write_text(WRK_SCRIPT)
        print(f"\n## Apps under wrk (1 thread, 16 connections, {args.duration} s, {args.rounds} rounds, medians)\n")
        print("| app | limiter | req/s | p99 ms | vs no limiter |\n|---|---|---|---|---|")
        for framework in ("flask", "fastapi"):
            variants = ["none", "ours", "theirs"]
            results: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}
            for round_ in range(args.rounds):
                for variant in variants if round_ % 2 == 0 else list(reversed(variants)):
                    port = free_port()
                    app = start_app(framework, variant, module_url, port)
                    try:
                        wrk(port, 1, script)  # warm-up
                        rps, p99, non2xx = wrk(port, args.duration, script)
                        if non2xx:
                            raise RuntimeError(f"{framework} {variant}: {non2xx} answers were not 2xx")
                        results[variant].append((rps, p99))
                    finally:
                        app.terminate()
                        app.wait(10)
            base = statistics.median(r for r, _ in results["none"])
            names = {"none": "none", "ours": "ml-api-rate-limiter",
                     "theirs": "Flask-Limiter" if framework == "flask" else "slowapi"}
            for variant in variants:
                rps = statistics.median(r for r, _ in results[variant])
                p99 = statistics.median(p for _, p in results[variant])
                server = "Flask (gunicorn -w 2)" if framework == "flask" else "FastAPI (uvicorn)"
                print(f"| {server} | {names[variant]} | {rps:.0f} | {p99:.2f} | {rps / base:.2f}x |")
        print("\n## Two limits, ten requests from one key\n")
        sys.stdout.flush()
        subprocess.run([PY, str(HERE / "two_limits.py"), module_url], check=True)
    finally:
        for process, _ in servers:
            process.kill()


if __name__ == "__main__":
    main()
