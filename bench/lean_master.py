"""The ceiling the benchmark compares Metrion against: mitmproxy's lean Master exactly as
`metrion serve` builds it (metrion_cli.serve.run_lean_master), with no Metrion addon.

    .venv/bin/python bench/lean_master.py --upstream http://127.0.0.1:9001 --port 9100 --confdir /tmp/x

With `--stream` it gets one tiny addon, `StreamSSE`, that sets `flow.response.stream = True` for
`text/event-stream` responses: SSE passes through chunk by chunk (no tap, nothing read), as
Metrion streams it. Without it the lean Master buffers the whole SSE body, as mitmproxy does by
default (the `lean-master-streaming` and `lean-master` targets of bench/run.py).

Runs until SIGTERM/SIGINT. Prints nothing when ready: bench/run.py waits for the port.
"""

import argparse
import sys

from metrion_cli.serve import run_lean_master, run_until_stopped


class StreamSSE:
    """Stream `text/event-stream` responses through unchanged instead of buffering them."""

    def responseheaders(self, flow) -> None:
        if flow.response.headers.get("content-type", "").startswith("text/event-stream"):
            flow.response.stream = True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--upstream", required=True, help="where the reverse proxy sends requests")
    p.add_argument("--port", type=int, required=True, help="listen port on 127.0.0.1")
    p.add_argument("--confdir", required=True, help="mitmproxy's confdir (its CA goes there)")
    p.add_argument("--stream", action="store_true",
                   help="stream text/event-stream responses (flow.response.stream = True) instead of buffering")
    args = p.parse_args(argv)
    settings = {
        "mode": [f"reverse:{args.upstream}@127.0.0.1:{args.port}"],
        "connection_strategy": "lazy",
        "termlog_verbosity": "warn",
        "confdir": args.confdir,
    }
    return run_until_stopped(run_lean_master(settings, [StreamSSE()] if args.stream else []))


if __name__ == "__main__":
    sys.exit(main())
