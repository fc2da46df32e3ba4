"""The two other ways to run the addons: `metrion demo` and a stock `mitmdump -s addons/metrion.py`."""

import re
import shlex
import sqlite3
import subprocess

import httpx2 as httpx

from conftest import VENV_BIN, Gateway, assert_no_secrets, free_port


def test_demo_prints_a_curl_that_works_and_leaves_a_row(run_cli, data_dir, secrets_used):
    run_cli("init")
    port = free_port()
    gateway = Gateway([str(VENV_BIN / "metrion"), "demo", "--port", f"openai={port}"],
                      data_dir, secrets_used, {"openai": port})
    try:
        text = "".join(gateway.output)
        token = re.search(r"(mtr_[A-Za-z0-9_-]+)", text).group(1)
        curl = re.search(r"  (curl .*?)\n\n", text, re.S).group(1).replace("\\\n", " ")
        args = shlex.split(curl)
        url = args[1]
        headers = dict(h.split(": ", 1) for h in args[args.index("-H") + 1::2][:3])
        body = args[args.index("-d") + 1]
        assert url == f"http://127.0.0.1:{port}/v1/chat/completions"
        r = httpx.post(url, headers=headers, content=body)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"]
        [row] = gateway.wait_rows(1)
        assert row["status"] == 200 and row["requester"] == "me@example.com"
        assert row["input_tokens"] == r.json()["usage"]["prompt_tokens"]
        python_line = next(l for l in text.splitlines() if l.strip().endswith("- <<'PY'"))
        assert python_line.split()[0] == ".venv/bin/python"  # runnable as printed, from the project
    finally:
        gateway.stop()
    # Once the demo stops, its token and fake keys are gone: they can never reach a real API.
    assert "(none)" in run_cli("keys", "list").output.split("registered")[0]
    demo_tokens = [l for l in run_cli("tokens", "list", "--account", "demo").output.splitlines()[1:]]
    assert demo_tokens and all(l.rstrip().endswith("Z") for l in demo_tokens)
    # The demo prints its token once, on purpose; after that it must appear nowhere.
    after_banner = "".join(gateway.output).split("metrion: ready", 1)[1]
    assert_no_secrets([token], [data_dir], after_banner)


def test_mitmdump_runs_the_same_addons(acme, fake_openai, data_dir, secrets_used):
    port = free_port()
    args = [str(VENV_BIN / "mitmdump"), "-q", "-s", "addons/metrion.py",
            "--mode", f"reverse:{fake_openai.url}@127.0.0.1:{port}",
            "--set", "connection_strategy=lazy", "--set", f"metrion_data_dir={data_dir}",
            "--set", f"metrion_upstream=openai={fake_openai.url}"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline_ok = False
        for _ in range(200):
            try:
                r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions",
                               headers={"authorization": f"Bearer {acme.token}"},
                               json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
                deadline_ok = True
                break
            except httpx.ConnectError:
                import time
                time.sleep(0.05)
        assert deadline_ok, "mitmdump did not listen"
        assert r.status_code == 200
        assert fake_openai.received[-1].header("authorization") == f"Bearer {acme.keys['openai']}"
    finally:
        proc.terminate()
        output = proc.communicate(timeout=15)[0]
    assert proc.returncode == 0, output
    with sqlite3.connect(data_dir / "metrion.db") as conn:
        rows = conn.execute("SELECT status, mode, input_tokens FROM requests").fetchall()
    assert rows == [(200, "stored", fake_openai.sent[-1].usage["prompt_tokens"])]
