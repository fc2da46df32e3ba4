import asyncio
import signal

import click

from .. import db as dbmod
from . import pass_paths


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8001, show_default=True, type=int, help="Port to listen on.")
@pass_paths
def ui(paths, host, port):
    """Open the dashboard: logs, latency and usage (Datasette over metrion.db).

    Prints the dashboard's address and a one-time login URL for the operator, the only one
    allowed to run arbitrary SQL. The vault is never opened.

    \b
    Example:
      metrion ui --port 8001      # then open http://127.0.0.1:8001/metrion
    """
    import uvicorn

    from ..dashboard import build

    dbmod.upgrade(paths)
    ds = build(paths.metrion_db)
    asyncio.run(ds.invoke_startup())
    base = f"http://{host}:{port}"
    lines = [
        f"metrion: dashboard on {base}/{paths.metrion_db.stem}",
        f"metrion:   logs     {base}/{paths.metrion_db.stem}/requests",
        f"metrion:   latency  {base}/{paths.metrion_db.stem}/latency",
        f"metrion:   usage    {base}/{paths.metrion_db.stem}/usage",
        f"metrion: operator login (SQL allowed): {base}/-/auth-token?token={ds._root_token}",
        "metrion: ready",
    ]

    class Server(uvicorn.Server):
        async def startup(self, sockets=None) -> None:
            await super().startup(sockets)
            if self.started:  # listening: now the addresses work
                click.echo("\n".join(lines))

    # uvicorn stops gracefully on SIGINT/SIGTERM, then raises the signal again under the handler
    # it found: ignored, the dashboard exits 0 after a stop, as `metrion serve` does.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    Server(uvicorn.Config(ds.app(), host=host, port=port, log_level="warning", lifespan="on")).run()


def register(cli) -> None:
    cli.add_command(ui)
