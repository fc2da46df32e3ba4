"""Shared fixtures: a fresh data directory and master key per test, the fake upstreams, and a
real `metrion serve` process on free loopback ports.

Every secret a test uses is registered with `secrets_used`; when the gateway stops, its data
directory and its whole output are searched for each of them, in clear and in base64.
"""

import json
import os
import secrets as secretsmod
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from click.testing import CliRunner

from metrion_cli import PROVIDER_NAMES
from metrion_cli.cli import cli
from metrion_cli.fakes import FakeUpstream
from metrion_cli.vault import format_key

VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports: all held at once while chosen (one after another, the
    kernel may hand out the same port twice, and a gateway then finds two listeners on it)."""
    held = []
    try:
        for _ in range(count):
            s = socket.socket()
            held.append(s)
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in held]
    finally:
        for s in held:
            s.close()


@pytest.fixture(autouse=True)
def metrion_env(tmp_path, monkeypatch):
    """Each test: its own data dir and master key; the user's real config is never touched."""
    data_dir = tmp_path / "data"
    monkeypatch.setenv("METRION_DATA_DIR", str(data_dir))
    monkeypatch.setenv("METRION_SECRET_KEY", format_key(1, secretsmod.token_bytes(32)))
    monkeypatch.delenv("METRION_SECRET_KEY_FILE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return data_dir


@pytest.fixture
def data_dir(metrion_env) -> Path:
    return metrion_env


@pytest.fixture
def secrets_used() -> list[str]:
    return []


@pytest.fixture
def run_cli(secrets_used):
    runner = CliRunner()

    def run(*args: str, input: str | None = None, ok: bool = True):
        result = runner.invoke(cli, list(args), input=input, catch_exceptions=False)
        if ok:
            assert result.exit_code == 0, result.output
        # Only these print a secret, on purpose: a new token, and a snippet the user asked to fill.
        prints_secret = args[:2] in (("tokens", "create"), ("tokens", "rotate")) or args[0] == "integrate"
        for secret in secrets_used:
            assert prints_secret or secret not in result.output
        return result

    return run


@dataclass
class Setup:
    account: str
    token: str
    keys: dict[str, str] = field(default_factory=dict)


@pytest.fixture
def acme(run_cli, secrets_used) -> Setup:
    """An initialised data dir with account `acme`, a stored OpenAI key and a token."""
    run_cli("init")
    run_cli("accounts", "add", "acme")
    key = "sk-test-" + secretsmod.token_hex(16)
    secrets_used.append(key)
    run_cli("keys", "add", "acme", "openai", input=key + "\n")
    token = run_cli("tokens", "create", "acme", "--quiet").output.strip()
    secrets_used.append(token)
    return Setup("acme", token, {"openai": key})


@pytest.fixture
def fake_openai():
    with FakeUpstream("openai") as fake:
        yield fake


class Gateway:
    def __init__(self, args: list[str], data_dir: Path, secrets_used: list[str], ports: dict[str, int]):
        self.data_dir = data_dir
        self.ports = ports
        self.secrets_used = secrets_used
        self.output: list[str] = []
        self.killed = False
        self.proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ.copy())
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._ready.wait(30):
            self.stop(check=False)
            raise AssertionError("gateway did not start:\n" + "".join(self.output))

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.output.append(line)
            if line.startswith("metrion: ready"):
                self._ready.set()

    def url(self, provider: str = "openai") -> str:
        return f"http://127.0.0.1:{self.ports[provider]}"

    def rows(self, where: str = "1", params: tuple = ()) -> list[dict]:
        conn = sqlite3.connect(self.data_dir / "metrion.db")
        conn.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in conn.execute(f"SELECT * FROM requests WHERE {where} ORDER BY id", params)]
        finally:
            conn.close()

    def wait_rows(self, count: int, timeout: float = 5.0) -> list[dict]:
        """Rows reach SQLite through the writer's batches: wait for them, not a fixed time."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.count_rows()
            if found >= count or time.monotonic() > deadline:
                assert found >= count, f"expected {count} rows, found {found}"
                return self.rows()
            time.sleep(0.02)

    def count_rows(self) -> int:
        conn = sqlite3.connect(self.data_dir / "metrion.db")
        try:
            return conn.execute("SELECT count(*) FROM requests").fetchone()[0]
        finally:
            conn.close()

    def kill(self) -> None:
        """SIGKILL: no flush, no goodbye; the row batch in flight may be lost."""
        self.killed = True
        self.proc.kill()
        self.proc.wait()

    def stop(self, check: bool = True) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)
        if check:
            assert self.killed or self.proc.returncode == 0, "".join(self.output)
            assert_no_secrets(self.secrets_used, [self.data_dir], "".join(self.output))
        return self.proc.returncode


_SWEEP = """
import base64, json, pathlib, sys
job = json.load(sys.stdin)
blobs = [("output", job["text"].encode())]
for d in job["dirs"]:
    blobs += [(str(p), p.read_bytes()) for p in pathlib.Path(d).rglob("*") if p.is_file()]
for secret in job["secrets"]:
    s = secret.encode()
    for form in (s, base64.b64encode(s), base64.urlsafe_b64encode(s)):
        for where, blob in blobs:
            if form in blob:
                print(f"a secret ({secret[:6]}...) appears in {where}")
"""


def assert_no_secrets(secrets_used: list[str], dirs: list[Path], text: str) -> None:
    """Searches files and output for each secret, in clear and base64.

    It runs in a child process: reading a SQLite file with plain open()/close() here would drop
    this process's POSIX locks on it, which SQLite connections still open in this process (the
    in-process CLI's) rely on, and later readers here would see a stale WAL.
    """
    job = json.dumps({"secrets": secrets_used, "dirs": [str(d) for d in dirs], "text": text})
    found = subprocess.run([sys.executable, "-c", _SWEEP], input=job, capture_output=True,
                           text=True, check=True).stdout
    assert not found, found


@pytest.fixture
def start_gateway(data_dir, secrets_used):
    started: list[Gateway] = []

    def start(upstreams: dict[str, str], extra: list[str] = ()) -> Gateway:
        ports = dict(zip(upstreams, free_ports(len(upstreams))))
        args = [str(VENV_BIN / "metrion"), "serve"]
        for name in PROVIDER_NAMES:
            if name in upstreams:
                args += ["--port", f"{name}={ports[name]}", "--upstream", f"{name}={upstreams[name]}"]
            else:
                args += ["--port", f"{name}=off"]
        gateway = Gateway(args + list(extra), data_dir, secrets_used, ports)
        started.append(gateway)
        return gateway

    yield start
    # Stop every one before reporting any failure: no test may leave a process running.
    failures = []
    for gateway in started:
        try:
            gateway.stop()
        except AssertionError as e:
            failures.append(e)
    if failures:
        raise failures[0]


@pytest.fixture
def gateway(acme, fake_openai, start_gateway) -> Gateway:
    return start_gateway({"openai": fake_openai.url})


def browser_dom(url: str, tmp_path: Path) -> str:
    """The page at `url` as headless Chromium renders it (its DOM after scripts ran).
    Chromium is Debian's package, installed by `make test`."""
    import shutil

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Chromium is not installed: `make test` installs it (apt-get install chromium)"
    profile = tmp_path / f"chromium-profile-{time.monotonic_ns()}"
    result = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         f"--user-data-dir={profile}", "--dump-dom", url],
        capture_output=True, text=True, timeout=90)
    assert result.returncode == 0 and "<html" in result.stdout, result.stderr[-2000:]
    return result.stdout
