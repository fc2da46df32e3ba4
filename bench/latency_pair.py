"""c=1 latency of two targets, request by request: what one adds over the other.

Sends the plain JSON chat completion (wrk's json mode) to A and to B in turn, one request at a
time, each over its own keep-alive connection, from a raw socket, and prints one JSON line:
each target's median time to the last byte of the response, and the median of the paired
differences B - A (each B request against the A request just before or after it; the order
within a pair alternates).

Runs minutes apart see this machine differ by more than what is measured (the lean Master's
c=1 p50 moved 0.54-0.84 ms between runs, and 0.66-1.05 ms between one-second wrk runs taken
back to back); requests a millisecond apart see the same machine.

    .venv/bin/python bench/latency_pair.py http://127.0.0.1:9100 "Bearer sk-bench-key" \\
        http://127.0.0.1:8101 "Bearer mtr_..." -n 2000
"""

import argparse
import json
import statistics
import sys

from ttfb_probe import Connection, ProbeError, build_request


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("url_a", help="base URL of target A (the baseline)")
    p.add_argument("auth_a", help="Authorization header value for A")
    p.add_argument("url_b", help="base URL of target B")
    p.add_argument("auth_b", help="Authorization header value for B")
    p.add_argument("-n", type=int, default=2000, help="measured pairs (default 2000)")
    p.add_argument("--warmup", type=int, default=50, help="pairs sent first, not measured")
    args = p.parse_args(argv)
    targets = [build_request(args.url_a, args.auth_a, None), build_request(args.url_b, args.auth_b, None)]
    conns = [Connection(host, port) for host, port, _ in targets]
    a_ms: list[float] = []
    b_ms: list[float] = []
    failed = 0
    try:
        for i in range(args.warmup + args.n):
            seconds = [0.0, 0.0]
            ok = True
            for which in ((0, 1) if i % 2 == 0 else (1, 0)):
                host, port, request = targets[which]
                try:
                    _, seconds[which], status = conns[which].timed_exchange(request)
                    ok = ok and status == 200
                except (ProbeError, OSError, ValueError):
                    conns[which].close()
                    conns[which] = Connection(host, port)
                    ok = False
            if not ok:
                failed += 1
            elif i >= args.warmup:
                a_ms.append(seconds[0] * 1000)
                b_ms.append(seconds[1] * 1000)
    finally:
        for conn in conns:
            conn.close()
    if not a_ms:
        print(json.dumps({"error": f"no successful pair ({failed} failed)"}))
        return 1
    print(json.dumps({
        "n": len(a_ms), "failed": failed, "a_median_ms": statistics.median(a_ms),
        "b_median_ms": statistics.median(b_ms),
        "added_median_ms": statistics.median(b - a for a, b in zip(a_ms, b_ms)),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
