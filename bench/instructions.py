"""Instructions per request: the lean Master and Metrion, counted by valgrind's callgrind.

bench/run.py measures time, and on a shared VM the same code's requests/s moves by up to 14%
from run to run: a change worth 2% cannot be seen there. Callgrind counts every instruction a
process executes (all its threads), and the same load gives the same count within a fraction
of a percent, so this shows what a change to the hot path costs or saves. It is a guide, not
the issue's figure: time also depends on caches and on how the threads share a core.

    make bench-instructions                                   # installs valgrind if missing
    .venv/bin/python bench/instructions.py --requests 2000

Each target runs under callgrind (about 50 times slower), pinned to the last core; the fake
upstream and this driver use the first. After a warm-up the counters are zeroed, REQUESTS
non-streaming chat completions are sent over 16 keep-alive connections, and the count is read.
Work done on a timer (Metrion's snapshot reload every 250 ms, the upstream watchdog) runs per
second, not per request, and under callgrind a second holds few requests; so each target is
also counted idle for IDLE seconds, and the table gives the loaded count and the count net of
that idle rate. The writer's fixed cost per commit is shared by a dozen rows here and by
hundreds at full speed: it weighs more here.

Callgrind also simulates this machine's caches (`--cache-sim`, geometry from sysfs: its L1s,
and its per-core L2 as the last level), and the table gives the L2 misses per request: each is
a trip to L3 or memory, tens of cycles, which instruction counts do not show. `--no-cache-sim`
skips it (about 3 minutes instead of 7). Writes bench/results/instructions.md. `--stream`
counts streamed requests (20 chunks, 4 connections) against the lean Master streaming them,
into bench/results/instructions-stream.md.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import glob
import http.client
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (bench/run.py: processes, ports, the bench's keys)

BODY = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello in one short sentence."}]}'
# As bench/lua/chat.lua's stream mode: an SSE stream of 20 content chunks.
STREAM_BODY = BODY.replace(b'"messages"', b'"stream":true,"messages"', 1)
STREAM_HEADERS = {"Accept": "text/event-stream", "x-fake-chunks": "20"}
CONNECTIONS = 16
STREAM_CONNECTIONS = 4  # as the bench's stream figures (c=4)


def send(port: int, auth: str, requests: int, stream: bool = False) -> None:
    """`requests` chat completions (SSE streams with `stream`) over keep-alive connections, each
    read whole; each must be a 200."""
    failures: list[str] = []
    body, extra = (STREAM_BODY, STREAM_HEADERS) if stream else (BODY, {})
    connections = STREAM_CONNECTIONS if stream else CONNECTIONS

    def connection(count: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        try:
            for _ in range(count):
                conn.request("POST", "/v1/chat/completions", body,
                             {"Authorization": auth, "Content-Type": "application/json", **extra})
                response = conn.getresponse()
                response.read()
                if response.status != 200:
                    failures.append(f"status {response.status}")
                    return
        except OSError as e:
            failures.append(repr(e))
        finally:
            conn.close()

    counts = [requests // connections + (i < requests % connections) for i in range(connections)]
    threads = [threading.Thread(target=connection, args=(count,)) for count in counts if count]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise run.BenchError(f"port {port}: {len(failures)} connections failed, e.g. {failures[0]}")


# valgrind's cache options <- (level, type) of this machine's caches in sysfs.
_SIMULATED = {"--I1": (1, "Instruction"), "--D1": (1, "Data"), "--LL": (2, "Unified")}
L2_MISSES = ("ILmr", "DLmr", "DLmw")  # with --LL at the L2: its misses, instructions and data


def cache_options(cpu: int = 0) -> list[str] | None:
    """callgrind's cache geometry for `cpu`: its L1 caches, and its L2 as the last level (the
    L3 is shared and large: an L2 miss is the cost to see). None when sysfs does not say."""
    found: dict[tuple[int, str], str] = {}
    for index in sorted(Path(f"/sys/devices/system/cpu/cpu{cpu}/cache").glob("index*")):
        try:
            level, kind, size, ways, line = (
                (index / name).read_text().strip()
                for name in ("level", "type", "size", "ways_of_associativity", "coherency_line_size"))
            scale = {"K": 1024, "M": 1024 * 1024}.get(size[-1:], 1)
            found[(int(level), kind)] = f"{int(size.rstrip('KM')) * scale},{int(ways)},{int(line)}"
        except (OSError, ValueError):
            return None
    if not all(key in found for key in _SIMULATED.values()):
        return None
    return ["--cache-sim=yes"] + [f"{option}={found[key]}" for option, key in _SIMULATED.items()]


class Counted:
    """A process under callgrind whose event counts (instructions, cache misses) can be zeroed
    and read."""

    def __init__(self, proc: run.Proc, out_dir: Path) -> None:
        self.proc = proc
        self.out_dir = out_dir

    def _control(self, flag: str) -> None:
        r = subprocess.run(["callgrind_control", flag, str(self.proc.pid)], capture_output=True, text=True,
                           timeout=120)
        if r.returncode != 0:
            raise run.BenchError(f"callgrind_control {flag} {self.proc.name}: {r.stdout}{r.stderr}")

    def zero(self) -> None:
        self._control("-z")

    def read(self) -> dict[str, int]:
        """Event counts since the last zero() or read(): {"Ir": instructions, ...}."""
        pattern = str(self.out_dir / f"cg.{self.proc.pid}.*")
        for old in glob.glob(pattern):
            os.remove(old)
        self._control("-d")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for path in glob.glob(pattern):
                text = Path(path).read_text(errors="replace")
                events: list[str] = []
                for line in text.splitlines():
                    if line.startswith("events:"):
                        events = line.split()[1:]
                    elif line.startswith(("summary:", "totals:")):
                        return dict(zip(events, map(int, line.split()[1:])))
            time.sleep(0.2)
        raise run.BenchError(f"no callgrind dump from {self.proc.name}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="Example: .venv/bin/python bench/instructions.py --requests 2000")
    p.add_argument("--requests", type=int, default=800, help="counted requests per target (default 800)")
    p.add_argument("--idle", type=float, default=5.0, help="idle seconds counted per target (default 5)")
    p.add_argument("--stream", action="store_true",
                   help="SSE streams of 20 chunks at c=4, against the lean Master streaming them "
                        "(bench/lean_master.py --stream), instead of JSON at c=16")
    p.add_argument("--output", type=Path,
                   help="default bench/results/instructions.md (instructions-stream.md with --stream)")
    p.add_argument("--no-cache-sim", action="store_true", help="count instructions only (faster)")
    args = p.parse_args(argv)
    if args.output is None:
        args.output = run.BENCH / "results" / ("instructions-stream.md" if args.stream else "instructions.md")
    if not shutil.which("valgrind"):
        print("instructions: valgrind is not installed (apt-get install -y valgrind; "
              "`make bench-instructions` does it)", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="metrion-instructions-"))
    cpus = sorted(os.sched_getaffinity(0))
    target_cpus, load_cpus = ({cpus[-1]}, {cpus[0]}) if len(cpus) >= 2 else (None, None)
    if load_cpus:
        os.sched_setaffinity(0, load_cpus)
    env = run.bench_environment(tmp)
    procs: list[run.Proc] = []
    cache = None if args.no_cache_sim else cache_options(min(target_cpus) if target_cpus else 0)
    callgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/cg.%p", *(cache or [])]

    def start(name: str, argv: list[str], port: int, cpus_: set[int] | None, line: str | None = None) -> run.Proc:
        proc = run.Proc(name, argv, tmp, cpus_, env)
        procs.append(proc)
        proc.wait_ready(port=port, line=line, timeout=1200)
        return proc

    rows: list[tuple[str, float, float, float | None]] = []
    try:
        fake_port = run.free_port()
        start("fake", [run.PYTHON, "-m", "metrion_cli.fakes", f"openai={fake_port}", "--no-record"], fake_port,
              load_cpus, line="listening")
        upstream = f"http://127.0.0.1:{fake_port}"
        skipped: list[str] = []
        token = run.set_up_bench_account(functools.partial(run.metrion_cli, env, tmp / "data"), skipped)
        if skipped:
            raise run.BenchError("; ".join(skipped))

        lean_port, metrion_port = run.free_port(), run.free_port()
        base_name = "lean-master-streaming" if args.stream else "lean-master"
        lean = Counted(start(base_name, callgrind + [
            run.PYTHON, str(run.BENCH / "lean_master.py"), *(["--stream"] if args.stream else []),
            "--upstream", upstream, "--port", str(lean_port), "--confdir", str(tmp / "lean-conf")],
            lean_port, target_cpus), tmp)
        gateway = Counted(start("metrion", callgrind + [
            str(run.VENV_BIN / "metrion"), "--data-dir", str(tmp / "data"), "serve", "--port",
            f"openai={metrion_port}", *run.OTHER_PROVIDERS_OFF, "--upstream", f"openai={upstream}"],
            metrion_port, target_cpus, line="metrion: ready"), tmp)

        for name, counted, port, auth in (
                (base_name, lean, lean_port, f"Bearer {run.STORED_KEY}"),
                ("metrion-stored", gateway, metrion_port, f"Bearer {token}"),
                ("metrion-passthrough", gateway, metrion_port, f"Bearer {run.PASSTHROUGH_KEY}")):
            send(port, auth, 300, args.stream)  # warm-up: caches filled, first-request imports done
            time.sleep(1.0)
            counted.zero()
            time.sleep(args.idle)
            idle = counted.read()
            started = time.monotonic()
            send(port, auth, args.requests, args.stream)
            time.sleep(1.0)  # the writer's last batch of these requests commits within 250 ms
            loaded = counted.read()
            elapsed = time.monotonic() - started

            def net_per_request(events: tuple[str, ...]) -> float:
                spent = sum(loaded.get(e, 0) for e in events)
                return (spent - sum(idle.get(e, 0) for e in events) / args.idle * elapsed) / args.requests

            per_request = loaded["Ir"] / args.requests
            net = net_per_request(("Ir",))
            l2 = net_per_request(L2_MISSES) if cache else None
            rows.append((name, per_request, net, l2))
            print(f"{name}: {per_request:,.0f} instructions per request ({net:,.0f} net of "
                  f"{idle['Ir'] / args.idle:,.0f}/s idle; {elapsed:.0f} s for {args.requests})"
                  + (f"; {l2:,.0f} L2 misses per request net of idle" if l2 is not None else ""), flush=True)
    except run.BenchError as e:
        print(f"instructions: {e}", file=sys.stderr)
        return 1
    finally:
        for proc in procs:
            proc.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    base, base_net, base_l2 = rows[0][1], rows[0][2], rows[0][3]
    commit = run.commit_label()
    lines = ["# Instructions per request (callgrind)", "",
             f"- date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}, "
             f"git commit: {commit}",
             (f"- {args.requests} streamed chat completions (20 chunks) at c={STREAM_CONNECTIONS} per target, "
              "the lean Master streaming them too; " if args.stream else
              f"- {args.requests} non-streaming chat completions at c={CONNECTIONS} per target, ")
             + "after 300 warm-up; "
             f"idle rate over {args.idle:g} s",
             f"- caches simulated: {' '.join(cache[1:]) if cache else 'none (--no-cache-sim, or sysfs does not say)'}",
             "",
             f"| target | instructions / request | vs {rows[0][0]} | net of idle | vs {rows[0][0]} |"
             + (f" L2 misses / request, net of idle | vs {rows[0][0]} |" if base_l2 is not None else ""),
             "|---|---:|---:|---:|---:|" + ("---:|---:|" if base_l2 is not None else "")]
    for name, per_request, net, l2 in rows:
        lines.append(f"| {name} | {per_request:,.0f} | {per_request / base:.3f}x | {net:,.0f} | {net / base_net:.3f}x |"
                     + ("" if base_l2 is None else f" {l2:,.0f} | {l2 / base_l2:.2f}x |" if l2 is not None and base_l2 > 0
                        else " n/a | n/a |"))
    text = "\n".join(lines) + "\n"
    print()
    print(text, end="")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
