"""How many request rows per second metrion_cli.writer.Writer commits when fed directly.

Builds N rows shaped like the Recorder's (same keys and kinds of values: an OpenAI chat
completion with its usage object), then puts them all on a Writer against the given data
directory's metrion.db (which must be freshly `metrion init`ed) and times from the first
put() until Writer.written reaches N. Prints one JSON line.

    .venv/bin/python bench/writer_bench.py --data-dir /tmp/x/data --rows 200000
"""

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

from metrion_cli.db import isoformat
from metrion_cli.paths import resolve
from metrion_cli.writer import Writer


def build_rows(n: int, requesters: int = 0) -> list[dict]:
    start = datetime.datetime.now(datetime.timezone.utc)
    rows = []
    for i in range(n):
        streamed = i % 4 == 3
        prompt, completion = 12 + i % 7, 3 + i % 20
        usage = {
            "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
        }
        stored = i % 2 == 0
        rows.append({
            "ts": isoformat(start + datetime.timedelta(microseconds=500 * i)),
            "account_id": 1,
            "token_id": 1 if stored else None,
            "provider": "openai",
            "method": "POST",
            "endpoint": "/v1/chat/completions",
            "status": 200,
            "streamed": int(streamed),
            "forwarded": 1,
            "ttfb_ms": round(0.8 + (i % 13) / 10, 3),
            "latency_ms": round(1.1 + (i % 17) / 10, 3),
            "request_bytes": 104,
            "requester": f"user{i % requesters}" if requesters else "bench" if i % 3 == 0 else None,
            "mode": "stored" if stored else "passthrough",
            "key_fingerprint": None if stored else "a1b2c3d4e5f60718",
            "error": None,
            "client_aborted": 0,
            "upstream_request_id": f"req_{i:024x}",
            "response_bytes": 5980 if streamed else 1028,
            "model": "gpt-4o-mini-2024-07-18",
            "input_tokens": prompt,
            "output_tokens": completion,
            "cached_tokens": 0,
            "cache_write_tokens": None,
            "reasoning_tokens": 0,
            "total_tokens": prompt + completion,
            "usage_raw": json.dumps(usage, separators=(",", ":")),
            "usage_note": None,
        })
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True, help="a freshly `metrion init`ed data directory")
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--requesters", type=int, default=0, metavar="N",
                   help="every row from one of N requesters in turn (default: a third from one, the rest none); "
                        "each is a facet combination the writer keeps")
    args = p.parse_args(argv)
    db_path = resolve(args.data_dir).metrion_db
    if not Path(db_path).exists():
        print(json.dumps({"error": f"no database at {db_path}: run metrion init first"}))
        return 1
    rows = build_rows(args.rows, args.requesters)
    writer = Writer(db_path).start()
    try:
        t0 = time.perf_counter()
        for row in rows:
            writer.put(row)
        put_s = time.perf_counter() - t0
        deadline = t0 + args.timeout
        while writer.written < args.rows - writer.dropped and time.perf_counter() < deadline:
            time.sleep(0.002)
        elapsed = time.perf_counter() - t0
        written, dropped = writer.written, writer.dropped
    finally:
        writer.close()
    print(json.dumps({
        "rows": args.rows, "written": written, "dropped": dropped, "seconds": elapsed,
        "put_seconds": put_s, "rows_per_s": written / elapsed, "db_bytes": os.path.getsize(db_path),
    }))
    return 0 if written == args.rows else 1


if __name__ == "__main__":
    sys.exit(main())
