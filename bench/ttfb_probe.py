"""Time to first byte of a streamed chat completion, seen by a client: a measurement probe.

Sends N sequential streaming requests (`"stream": true`, `x-fake-chunks: 20`) over one
keep-alive connection, from a raw socket so that no client library sits in the measurement,
and prints one JSON line: the median (and p90, min, max) time from sending the request to
the first byte of the response body, in ms. wrk cannot see this; the load comes from wrk.

    .venv/bin/python bench/ttfb_probe.py http://127.0.0.1:8101 --auth "Bearer mtr_..." -n 200
"""

import argparse
import json
import socket
import statistics
import sys
import time
import urllib.parse

BODY = (b'{"model":"gpt-4o-mini","stream":true,'
        b'"messages":[{"role":"user","content":"Say hello in one short sentence."}]}')
JSON_BODY = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello in one short sentence."}]}'


class ProbeError(Exception):
    pass


class Connection:
    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def _more(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ProbeError("connection closed by the server")
        self.buf += data

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._more()
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def _take(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._more()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def exchange(self, request: bytes) -> tuple[float, int]:
        """Send one request, read the whole response; (seconds to first body byte, status)."""
        ttfb, _, status = self.timed_exchange(request)
        return ttfb, status

    def timed_exchange(self, request: bytes) -> tuple[float, float, int]:
        """Send one request, read the whole response; (seconds to its first body byte, seconds
        to its last byte, status)."""
        if self.buf:
            raise ProbeError("unexpected bytes before the response")
        t0 = time.perf_counter()
        self.sock.sendall(request)
        while b"\r\n\r\n" not in self.buf:
            self._more()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        if not self.buf:
            self._more()
        ttfb = time.perf_counter() - t0
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip().lower()
        if headers.get(b"transfer-encoding") == b"chunked":
            while True:
                size = int(self._line().split(b";")[0], 16)
                self._take(size + 2)
                if size == 0:
                    break
        elif b"content-length" in headers:
            self._take(int(headers[b"content-length"]))
        else:
            raise ProbeError("response without length: cannot keep the connection")
        if headers.get(b"connection") == b"close":
            raise ProbeError("server closed the keep-alive connection")
        return ttfb, time.perf_counter() - t0, status


def build_request(url: str, auth: str, chunks: int | None) -> tuple[str, int, bytes]:
    """A streamed chat completion of `chunks` chunks; with `chunks=None`, the plain JSON one
    (the request wrk's json mode sends)."""
    u = urllib.parse.urlsplit(url)
    path = (u.path.rstrip("/") or "") + "/v1/chat/completions"
    host = u.hostname or "127.0.0.1"
    port = u.port or 80
    kind = (f"Accept: text/event-stream\r\nx-fake-chunks: {chunks}\r\n" if chunks is not None
            else "Accept: application/json\r\n")
    body = BODY if chunks is not None else JSON_BODY
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: {auth}\r\n"
        f"Content-Type: application/json\r\n{kind}Content-Length: {len(body)}\r\n\r\n"
    ).encode("latin-1") + body
    return host, port, request


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("url", help="base URL of the target, e.g. http://127.0.0.1:8101")
    p.add_argument("--auth", default="Bearer sk-bench-key", help="Authorization header value")
    p.add_argument("-n", type=int, default=200, help="measured requests (default 200)")
    p.add_argument("--warmup", type=int, default=5, help="requests sent first, not measured")
    p.add_argument("--chunks", type=int, default=20, help="x-fake-chunks (default 20)")
    args = p.parse_args(argv)
    host, port, request = build_request(args.url, args.auth, args.chunks)
    times: list[float] = []
    bad = 0
    conn = Connection(host, port)
    try:
        for i in range(args.warmup + args.n):
            try:
                ttfb, status = conn.exchange(request)
            except (ProbeError, OSError, ValueError):
                conn.close()
                conn = Connection(host, port)
                bad += 1
                continue
            if status != 200:
                bad += 1
            elif i >= args.warmup:
                times.append(ttfb * 1000)
    finally:
        conn.close()
    if not times:
        print(json.dumps({"error": f"no successful request ({bad} failed)"}))
        return 1
    times.sort()
    print(json.dumps({
        "n": len(times), "failed": bad, "median_ms": statistics.median(times),
        "p90_ms": times[int(0.9 * (len(times) - 1))], "min_ms": times[0], "max_ms": times[-1],
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
