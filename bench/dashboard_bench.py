"""The dashboard and the export on a big log: page render times and the export's time and memory.

Fills a freshly `metrion init`ed data directory with ROWS requests through the real Writer
(30 days of traffic: 5 providers, 12 models, 200 requesters, 20 accounts, the account `big`
holding half of it), starts `metrion ui` on a free port, and times the Logs and Latency pages
as a browser asks for them (one keep-alive connection, whole body read). Then runs
`metrion export big` RUNS times, each in a fresh wrapper process that reports its child's peak
RSS. Prints one JSON line. `--fill-only` and `--filled` split the filling from the timing.
`--page PATH` times more pages the same way (`make bench` times the two pages only, for its
10 minutes).

    .venv/bin/python bench/dashboard_bench.py --data-dir /tmp/x/data --rows 1000000
    .venv/bin/python bench/dashboard_bench.py --data-dir /tmp/x/data --rows 1000000 --filled \
        --port 8011 --page '/metrion/requests?provider=xai' --page '/metrion/requests?status=500'
"""

import argparse
import datetime
import http.client
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

from metrion_cli import accounts, db as dbmod
from metrion_cli.paths import resolve
from metrion_cli.writer import Writer

VENV_BIN = Path(sys.executable).parent
PROVIDER_MODELS = {
    "openai": ["gpt-4o-mini-2024-07-18", "gpt-4.1-2025-04-14", "text-embedding-3-small"],
    "anthropic": ["claude-sonnet-4-20250514", "claude-3-5-haiku-20241022"],
    "gemini": ["gemini-2.5-flash", "gemini-2.5-pro"],
    "mistral": ["mistral-small-latest", "mistral-large-latest", "codestral-latest"],
    "xai": ["grok-4", "grok-3-mini"],
}
PAGES = {"logs": "/metrion/requests", "latency": "/metrion/latency"}


def fill(data_dir: str, rows: int, seed: int = 7) -> float:
    """Writes `rows` requests through the Writer; returns the seconds it took."""
    paths = resolve(data_dir)
    db = dbmod.open_metrion(paths)
    ids = [accounts.add(db, "big", plan="pro")["id"]]
    ids += [accounts.add(db, f"team-{i:02d}")["id"] for i in range(19)]
    db.conn.close()
    rng = random.Random(seed)
    pairs = [(p, m) for p, models in PROVIDER_MODELS.items() for m in models]
    requesters = [None] + [f"user{i:03d}@example.com" for i in range(200)]
    start = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=30)
    step = 30 * 86400 / rows
    usage = '{"prompt_tokens":12,"completion_tokens":40,"total_tokens":52}'
    writer = Writer(paths.metrion_db).start()
    t0 = time.perf_counter()
    try:
        for i in range(rows):
            provider, model = pairs[rng.randrange(len(pairs))]
            status = 200 if rng.random() < 0.97 else rng.choice((400, 401, 429, 500, 529))
            moment = start + datetime.timedelta(seconds=i * step)
            writer.put({
                "ts": moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z",
                "account_id": ids[0] if i % 2 == 0 else rng.choice(ids[1:]), "token_id": 1,
                "provider": provider, "method": "POST", "endpoint": "/v1/chat/completions", "model": model,
                "status": status, "streamed": int(rng.random() < 0.3), "forwarded": 1,
                "input_tokens": 12, "output_tokens": 40, "total_tokens": 52, "usage_raw": usage,
                "ttfb_ms": round(rng.lognormvariate(5.5, 0.6), 3),
                "latency_ms": round(rng.lognormvariate(6.5, 0.8), 3),
                "request_bytes": 180, "response_bytes": 1200, "requester": rng.choice(requesters),
                "mode": "stored", "client_aborted": 0, "month": moment.strftime("%Y-%m"),
            })
            if i % 50_000 == 49_999:  # stay well under the writer's queue limit
                while writer.written < i - 50_000:
                    time.sleep(0.01)
        while writer.written < rows:
            time.sleep(0.01)
    finally:
        writer.close()
    return time.perf_counter() - t0


def start_ui(data_dir: str, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([str(VENV_BIN / "metrion"), "--data-dir", data_dir, "ui", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if line.startswith("metrion: ready"):
            return proc
    raise RuntimeError(f"metrion ui did not start (exit {proc.wait()})")


def time_page(port: int, path: str, fetches: int) -> list[float]:
    """Milliseconds from sending the request to the last byte of the page, `fetches` times."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    times = []
    try:
        for _ in range(fetches):
            t0 = time.perf_counter()
            conn.request("GET", path)
            response = conn.getresponse()
            body = response.read()
            times.append((time.perf_counter() - t0) * 1000)
            if response.status != 200 or not body:
                raise RuntimeError(f"GET {path}: HTTP {response.status}")
    finally:
        conn.close()
    return times


_PEAK = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
         "r = subprocess.run(sys.argv[1:]); "
         "print(r.returncode, time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def time_export(data_dir: str, out: Path) -> tuple[float, float, int]:
    """Seconds, peak RSS (MB) and size of one `metrion export big`."""
    argv = [sys.executable, "-c", _PEAK, str(VENV_BIN / "metrion"), "--data-dir", data_dir,
            "export", "big", "-o", str(out)]
    code, seconds, peak_kb = subprocess.run(argv, capture_output=True, text=True, check=True).stdout.split()
    if code != "0":
        raise RuntimeError(f"metrion export exited {code}")
    size = out.stat().st_size
    out.unlink()
    return float(seconds), int(peak_kb) / 1024, size


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True, help="a freshly `metrion init`ed data directory")
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--runs", type=int, default=3, help="runs of each figure")
    p.add_argument("--fetches", type=int, default=10, help="page loads per run (after 2 warm-ups)")
    p.add_argument("--port", type=int, help="port for `metrion ui` (required unless --fill-only)")
    p.add_argument("--page", action="append", default=[], metavar="PATH",
                   help="another page to time, e.g. '/metrion/requests?provider=xai' (repeatable)")
    p.add_argument("--fill-only", action="store_true",
                   help="fill the data directory and stop (bench/run.py fills it during the soak)")
    p.add_argument("--filled", action="store_true",
                   help="the data directory holds the --rows requests of an earlier --fill-only run")
    args = p.parse_args(argv)
    if args.fill_only:
        print(json.dumps({"rows": args.rows, "fill_seconds": fill(args.data_dir, args.rows)}))
        return 0
    if args.port is None:
        p.error("--port is required")
    result: dict = {"rows": args.rows}
    if not args.filled:
        result["fill_seconds"] = fill(args.data_dir, args.rows)
    ui = start_ui(args.data_dir, args.port)

    def medians_of_runs(path: str) -> list[float]:
        time_page(args.port, path, 2)
        return [statistics.median(time_page(args.port, path, args.fetches)) for _ in range(args.runs)]

    try:
        for name, path in PAGES.items():
            result[f"{name}_ms"] = medians_of_runs(path)
        if args.page:
            result["pages_ms"] = {path: medians_of_runs(path) for path in args.page}
    finally:
        ui.terminate()
        ui.wait(15)
    exports = [time_export(args.data_dir, Path(args.data_dir) / "export.json") for _ in range(args.runs)]
    result["export_seconds"] = [e[0] for e in exports]
    result["export_peak_mb"] = [e[1] for e in exports]
    result["export_bytes"] = exports[0][2]
    result["export_rows"] = (args.rows + 1) // 2
    result["db_bytes"] = os.path.getsize(resolve(args.data_dir).metrion_db)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
