import os
import sys

import click

from .. import export as exportmod
from . import open_db, pass_paths


@click.command()
@click.argument("account")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True),
              help="Write to this file instead of standard output.")
@pass_paths
def export(paths, account, output):
    """Export an account as JSON: the account, its tokens (prefixes only), monthly usage and
    every request it made, oldest first. Contains no key or token.

    \b
    Example:
      metrion export acme -o acme.json
    """
    db = open_db(paths)
    if output:
        # Written beside, renamed when complete: a failed export never leaves half a file or
        # destroys the previous one.
        partial = f"{output}.partial"
        try:
            with open(partial, "wb") as out:
                count = exportmod.export_account(db, account, out)
            os.replace(partial, output)
        finally:
            if os.path.exists(partial):
                os.remove(partial)
        click.echo(f"metrion: exported {account} ({count} requests) to {output}", err=True)
    else:
        exportmod.export_account(db, account, sys.stdout.buffer)


def register(cli) -> None:
    cli.add_command(export)
