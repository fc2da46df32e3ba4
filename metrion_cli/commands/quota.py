import click

from .. import accounts, quota as lib
from ..db import utcnow
from . import open_db, pass_paths, table


@click.group()
def quota():
    """Monthly request caps and per-token rate limits.

    \b
    Example:
      metrion quota set acme 50000
      metrion quota show
    """


@quota.command("show")
@click.argument("account", required=False)
@pass_paths
def show(paths, account):
    """Requests used this month (UTC) against the cap, and when the count resets.

    \b
    Example:
      metrion quota show acme
    """
    table(lib.show(open_db(paths), utcnow(), account),
          ["account", "plan", "month", "used", "cap", "rpm", "resets_at"])


@quota.command("set")
@click.argument("account")
@click.argument("cap", metavar="N|none|plan")
@pass_paths
def set_(paths, account, cap):
    """Set ACCOUNT's monthly cap: N requests, none (no cap) or plan (the plan's cap).

    The running proxy applies it within a second.

    \b
    Example:
      metrion quota set acme 50000
    """
    if cap not in ("none", "plan") and not cap.isdigit():
        raise click.BadParameter("expected a number of requests, none or plan", param_hint="CAP")
    row = accounts.set_cap(open_db(paths), account, None if cap == "plan" else cap)
    effective = accounts.monthly_cap(row)
    click.echo(f"account {row['name']}: monthly cap {'none' if effective is None else effective}")


@quota.command("rpm")
@click.argument("account")
@click.argument("rpm", metavar="N|none|default")
@pass_paths
def rpm(paths, account, rpm):
    """Set the requests per minute each of ACCOUNT's tokens may make (none: no limit).

    A token's own --rpm (`metrion tokens create --rpm`) wins over this.

    \b
    Example:
      metrion quota rpm acme 600
    """
    if rpm not in ("none", "default") and not (rpm.isdigit() and int(rpm) > 0):
        raise click.BadParameter("expected a positive number, none or default", param_hint="RPM")
    value = None if rpm == "default" else 0 if rpm == "none" else int(rpm)
    row = accounts.set_rpm(open_db(paths), account, value)
    limit = "the instance default" if value is None else f"{value} requests per minute" if value else "no limit"
    click.echo(f"account {row['name']}: per-token rate limit: {limit}")


def register(cli):
    cli.add_command(quota)
