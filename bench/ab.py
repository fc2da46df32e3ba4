"""A/B: Metrion at another commit against this checkout, both loaded at the same time.

    .venv/bin/python bench/ab.py --base HEAD~1                # 12 rounds of c=16 JSON, then c=1
    .venv/bin/python bench/ab.py --base main --mode stream    # c=4 streams instead
    make bench-ab BASE=HEAD~1

`make bench` judges Metrion against the lean Master, and its verdicts move with the machine by
more than a small change to the hot path is worth. This judges a change itself: two `metrion
serve`, one from a git worktree of --base (A) and one from this checkout, uncommitted changes
included (B), each over its own data directory (bench account, stored key, token, as
bench/run.py sets them up, each with its own CLI) in front of the same fake upstream, both
pinned on the proxy core. Each round loads both at once, each with its own wrk, and reads each
process's CPU time (all threads): requests per CPU-second, B over A. Which wrk starts first
alternates by round: measuring variants one after the other in a fixed order gave the first a
point or two less (the same build in three processes read 88.8%, 89.3% and 89.7% of the lean
Master by position). Then c=1 latency request by request (bench/latency_pair.py, B - A).

A and B share this checkout's .venv: a base whose uv.lock differs runs on these packages.
Prints one line per round, then the medians and ranges; nothing is written.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import run as bench

ROOT = bench.ROOT


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()


def cli_runner(env: dict, data: Path, code_dir: Path):
    """`metrion --data-dir DATA ARGS...` from `code_dir`'s packages (they come first on sys.path
    as the working directory of `python -c`)."""
    def metrion(*args: str, input: str | None = None, check: bool = True) -> str:
        argv = [bench.PYTHON, "-c", CLI, "--data-dir", str(data), *args]
        r = subprocess.run(argv, input=input, capture_output=True, text=True, cwd=code_dir, env=env, timeout=60)
        if check and r.returncode != 0:
            raise bench.BenchError(f"{code_dir.name}: metrion {' '.join(args)} failed ({r.returncode}):\n{r.stdout}{r.stderr}")
        return r.stdout if r.returncode == 0 else ""
    return metrion


CLI = "import sys; from metrion_cli.cli import cli; sys.exit(cli())"


class Side:
    def __init__(self, name: str, label: str, proc: bench.Proc, url: str, auth: str) -> None:
        self.name, self.label, self.proc, self.url, self.auth = name, label, proc, url, auth


def check_imports(code_dir: Path, env: dict) -> None:
    """The side's `python -c` imports Metrion from `code_dir`, not from the checkout that the
    .venv's editable install points at (which it would, e.g., under PYTHONSAFEPATH)."""
    probe = "import addons, metrion_cli; print(metrion_cli.__file__); print(addons.__file__)"
    r = subprocess.run([bench.PYTHON, "-c", probe], capture_output=True, text=True, cwd=code_dir, env=env, timeout=60)
    files = r.stdout.split()
    if r.returncode != 0 or len(files) != 2 or not all(Path(f).resolve().is_relative_to(code_dir.resolve()) for f in files):
        raise bench.BenchError(f"the side from {code_dir} imports Metrion from elsewhere:\n{r.stdout}{r.stderr}")


def start_side(name: str, label: str, code_dir: Path, tmp: Path, env: dict, fake_url: str,
               cpus: set[int] | None, procs: list[bench.Proc]) -> Side:
    check_imports(code_dir, env)
    data = tmp / f"data-{name}"
    token = bench.set_up_bench_account(cli_runner(env, data, code_dir), [])
    port = bench.free_port()
    proc = bench.Proc(name, [bench.PYTHON, "-c", CLI, "--data-dir", str(data), "serve", "--port",
                             f"openai={port}", *bench.OTHER_PROVIDERS_OFF, "--upstream", f"openai={fake_url}"],
                      tmp, cpus, env, cwd=code_dir)
    procs.append(proc)
    proc.wait_ready(port=port, line="metrion: ready")
    return Side(name, label, proc, f"http://127.0.0.1:{port}", f"Bearer {token}")


def wrk(side: Side, connections: int, seconds: int, mode: str, cpus: set[int] | None) -> subprocess.Popen:
    return subprocess.Popen(bench.wrk_argv(side.url, side.auth, connections, seconds, mode), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, preexec_fn=bench._child_setup(cpus, True))


def requests_done(output: str, side: Side) -> tuple[int, int]:
    result = bench.wrk_result(output, side.name)
    return result["requests"], sum(result["errors"].values())


def summary(values: list[float], unit: str, decimals: int) -> str:
    return (f"median {statistics.median(values):.{decimals}f}{unit}, "
            f"range {min(values):.{decimals}f}-{max(values):.{decimals}f}{unit} ({len(values)} rounds)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="the commit to compare against (A), e.g. HEAD~1 or main")
    p.add_argument("--rounds", type=int, default=12,
                   help="rounds of both loaded at once (default 12; an odd number is rounded up, so each starts first as often)")
    p.add_argument("--seconds", type=int, default=5, help="seconds per round (default 5)")
    p.add_argument("--mode", choices=("json", "stream"), default="json",
                   help="json: c=16 chat completions; stream: c=4 streams of 20 chunks")
    p.add_argument("--latency-rounds", type=int, default=4,
                   help="c=1 rounds of 2,000 request pairs, JSON chat completions in either mode (default 4; 0: none)")
    p.add_argument("--no-pin", action="store_true", help="do not pin the proxies and the load to separate cores")
    args = p.parse_args(argv)
    args.rounds += args.rounds % 2
    if shutil.which("wrk") is None:
        print("bench/ab.py: wrk is not installed (apt-get install wrk, or `make bench-ab`)", file=sys.stderr)
        return 2
    try:
        base = git("rev-parse", "--verify", f"{args.base}^{{commit}}")
    except subprocess.CalledProcessError:
        print(f"bench/ab.py: {args.base!r} is not a commit", file=sys.stderr)
        return 2
    cpus = sorted(os.sched_getaffinity(0))
    pinned = not args.no_pin and len(cpus) >= 2
    proxy_cpus, load_cpus = ({cpus[-1]}, {cpus[0]}) if pinned else (None, None)
    connections = 16 if args.mode == "json" else 4
    tmp = Path(tempfile.mkdtemp(prefix="metrion-ab-"))
    worktree = tmp / "base"
    env = bench.bench_environment(tmp)
    env.pop("PYTHONSAFEPATH", None)  # it would keep the worktree off side A's sys.path
    procs: list[bench.Proc] = []

    def stop(signum, frame):  # SIGTERM or a closed terminal: clean up as for Ctrl-C
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)
    try:
        try:
            git("worktree", "add", "--detach", str(worktree), base)
        except subprocess.CalledProcessError as e:
            raise bench.BenchError(f"git worktree add failed:\n{e.stderr}") from None
        fake_port = bench.free_port()
        fake = bench.Proc("fake", [bench.PYTHON, "-m", "metrion_cli.fakes", f"openai={fake_port}", "--no-record"],
                          tmp, load_cpus, env)
        procs.append(fake)
        fake.wait_ready(port=fake_port, line="listening")
        fake_url = f"http://127.0.0.1:{fake_port}"
        a = start_side("a", f"A {base[:12]} ({args.base})", worktree, tmp, env, fake_url, proxy_cpus, procs)
        b = start_side("b", f"B {bench.commit_label()} (this checkout)", ROOT, tmp, env, fake_url, proxy_cpus, procs)
        print(f"{a.label}\n{b.label}\n{args.mode}, c={connections}, {args.rounds} rounds of {args.seconds} s, "
              f"{'pinned: proxies on CPU ' + str(cpus[-1]) if pinned else 'not pinned'}", flush=True)
        if base == git("rev-parse", "HEAD") and not git("status", "--porcelain", "--untracked-files=no"):
            print("A and B are the same code (no uncommitted changes): this measures the tool's own noise",
                  flush=True)
        for side in (a, b):  # warm-up: caches filled, first-request imports done
            out = wrk(side, connections, 2, args.mode, load_cpus).communicate(timeout=60)[0]
            if requests_done(out, side)[1]:
                raise bench.BenchError(f"{side.name} answered warm-up requests with errors:\n{side.proc.log_tail()}")
        ratios: list[float] = []
        for r in range(args.rounds):
            order = (a, b) if r % 2 == 0 else (b, a)
            time.sleep(0.5)
            before = {s.name: s.proc.cpu_seconds() for s in order}
            runs = {s.name: wrk(s, connections, args.seconds, args.mode, load_cpus) for s in order}
            outputs = {name: run.communicate(timeout=args.seconds + 60)[0] for name, run in runs.items()}
            rate = {}
            for s in order:
                n, errors = requests_done(outputs[s.name], s)
                cpu = s.proc.cpu_seconds() - before[s.name]
                if errors or cpu <= 0:
                    raise bench.BenchError(f"round {r + 1}: {s.name} had {errors} errors, {cpu:.2f} s of CPU")
                rate[s.name] = n / cpu
            ratios.append(rate["b"] / rate["a"])
            print(f"round {r + 1:2}: A {rate['a']:6.0f}, B {rate['b']:6.0f} requests per CPU-second: "
                  f"B/A {ratios[-1] * 100:.1f}%", flush=True)
        added: list[float] = []
        for r in range(args.latency_rounds):
            time.sleep(0.5)
            first, second = (a, b) if r % 2 == 0 else (b, a)
            result = bench.run_script([bench.PYTHON, str(bench.BENCH / "latency_pair.py"), first.url, first.auth,
                                       second.url, second.auth, "-n", "2000"], "latency pair probe", env, 300, load_cpus)
            added.append(result["added_median_ms"] * (1 if first is a else -1))
            print(f"c=1 round {r + 1}: B - A {added[-1] * 1000:+.1f} µs per request", flush=True)
        print(f"\nrequests per CPU-second, B/A: {summary([x * 100 for x in ratios], '%', 1)}")
        if added:
            print(f"c=1 latency, B - A: {summary([x * 1000 for x in added], ' µs', 1)}")
        return 0
    except bench.BenchError as e:
        print(f"bench/ab.py: {e}", file=sys.stderr)
        return 1
    finally:
        for proc in reversed(procs):
            proc.stop()
        subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=ROOT, capture_output=True)
        subprocess.run(["git", "worktree", "prune"], cwd=ROOT, capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
