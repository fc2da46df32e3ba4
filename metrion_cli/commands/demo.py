import os
import sys
from pathlib import Path

import click

from .. import PROVIDER_NAMES, accounts, tokens
from ..serve import DEFAULT_PORTS
from . import open_db, open_vault, pass_paths

DEMO_ACCOUNT = "demo"
DEMO_KEY = "sk-demo-fake-upstream-key"


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", "ports", multiple=True, metavar="PROVIDER=PORT",
              help="Listen port of a provider (repeatable); defaults as for `metrion serve`.")
@pass_paths
def demo(paths, host, ports):
    """Run Metrion against built-in fake providers, with a demo account and a fresh token.

    \b
    Example:
      metrion demo      # then paste the printed curl command
    """
    from .serve import parse_pairs, port_or_off

    _demo(paths, host, parse_pairs(ports, port_or_off, "PORT"))


@click.command()
@click.pass_context
def run(ctx):
    """Serve the real providers if any account has a key stored, else run the demo.

    \b
    Example:
      metrion run       # what `make run` does after `metrion init`
    """
    paths = ctx.obj
    db = open_db(paths)
    demo_account = accounts.find(db, DEMO_ACCOUNT)
    real_keys = [k for k in open_vault(paths).listing()
                 if not demo_account or k["account_id"] != demo_account["id"]]
    if real_keys:
        from .serve import serve
        ctx.invoke(serve)  # which retires the demo's token and fake keys first
    else:
        click.echo("metrion: no provider key is stored; starting the demo "
                   "(store one with `metrion keys add ACCOUNT PROVIDER`)")
        _demo(paths, "127.0.0.1", {})


def retire_demo(paths) -> None:
    """The demo's token and fake keys work only while the demo runs: never against real APIs.
    Its rows stay, under the demo account."""
    db = open_db(paths)
    account = accounts.find(db, DEMO_ACCOUNT)
    if account is None:
        return
    for old in tokens.listing(db, account["id"]):
        if old["revoked"] is None:
            tokens.revoke(db, old["id"])
    vault = open_vault(paths)
    for name in PROVIDER_NAMES:
        vault.remove(account["id"], name)


def _relative(path) -> str:
    """Short when under the working directory (the project's `.venv/bin/...`), else absolute."""
    relative = os.path.relpath(path)
    return relative if not relative.startswith("..") else str(path)


def _python_command() -> str:
    return _relative(sys.executable)


def _demo(paths, host, ports):
    from ..fakes import HANDLERS, Behaviour, FakeUpstream
    from ..serve import ServeConfig, run as run_proxy

    retire_demo(paths)
    db = open_db(paths)
    account = accounts.ensure(db, DEMO_ACCOUNT)
    vault = open_vault(paths)
    # Five words: "Hello from the fake upstream", a reply that reads whole.
    fakes = {name: FakeUpstream(name, record=False, behaviour=Behaviour(chunks=5)).start()
             for name in HANDLERS}
    for name in fakes:
        vault.put(account["id"], name, DEMO_KEY)
    token, _ = tokens.create(db, account["id"], "demo")
    ports = {name: ports.get(name, DEFAULT_PORTS[name]) for name in fakes}
    base = f"http://{host}:{ports['openai']}"
    click.echo(f"""
Demo: fake providers answer instead of the real ones. Your demo token: {token}

  curl {base}/v1/chat/completions \\
    -H "Authorization: Bearer {token}" -H "content-type: application/json" \\
    -H "x-metrion-user: me@example.com" \\
    -d '{{"model": "gpt-4o-mini", "messages": [{{"role": "user", "content": "Hello"}}]}}'

  {_python_command()} - <<'PY'
from openai import OpenAI
client = OpenAI(api_key="{token}", base_url="{base}/v1")
print(client.chat.completions.create(model="gpt-4o-mini",
      messages=[{{"role": "user", "content": "Hello"}}]).choices[0].message.content)
PY

Each request becomes a row of `requests` in {paths.metrion_db}; to see them, in another
terminal: {_relative(Path(sys.executable).parent / "metrion")} --data-dir {_relative(paths.data_dir)} ui
The token and the fake keys stop working when the demo stops.
""", err=False)
    try:
        code = run_proxy(ServeConfig(data_dir=str(paths.data_dir), host=host,
                                     ports=ports,
                                     upstreams={n: f.url for n, f in fakes.items()}))
    finally:
        for fake in fakes.values():
            fake.stop()
        retire_demo(paths)
    raise SystemExit(code)


def register(cli):
    cli.add_command(demo)
    cli.add_command(run)
