"""One module per noun; each has `register(cli)`."""

import click

from .. import db as dbmod
from ..paths import Paths
from ..vault import Vault

pass_paths = click.make_pass_decorator(Paths)


def open_db(paths: Paths):
    return dbmod.open_metrion(paths)


def open_vault(paths: Paths) -> Vault:
    return Vault.open(paths)


def table(rows: list[dict], columns: list[str]) -> None:
    """A plain aligned table: readable in a terminal, easy to grep."""
    if not rows:
        click.echo("(none)")
        return
    cells = [[("" if r.get(c) is None else str(r.get(c))) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    click.echo("  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip())
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
