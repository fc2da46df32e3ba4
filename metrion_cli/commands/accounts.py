import click

from .. import accounts as lib
from . import open_db, pass_paths, table


@click.group()
def accounts():
    """Accounts: who requests are attributed to and capped by.

    \b
    Example:
      metrion accounts add acme --plan pro
      metrion accounts list
    """


@accounts.command("add")
@click.argument("name")
@click.option("--plan", type=click.Choice(lib.PLANS), default="free", show_default=True)
@pass_paths
def add(paths, name, plan):
    """Create an account.

    \b
    Example:
      metrion accounts add acme --plan pro
    """
    account = lib.add(open_db(paths), name, plan)
    click.echo(f"account {account['name']} (id {account['id']}, plan {account['plan']})")


@accounts.command("list")
@pass_paths
def list_(paths):
    """List accounts with their plan and active tokens.

    \b
    Example:
      metrion accounts list
    """
    rows = lib.listing(open_db(paths))
    for row in rows:
        cap = lib.monthly_cap(row)
        row["monthly_cap"] = "none" if cap is None else cap
    table(rows, ["id", "name", "plan", "monthly_cap", "active_tokens", "created"])


@accounts.command("show")
@click.argument("account")
@pass_paths
def show(paths, account):
    """Show one account: plan, cap and tokens.

    \b
    Example:
      metrion accounts show acme
    """
    from .. import tokens

    db = open_db(paths)
    row = lib.get(db, account)
    cap = lib.monthly_cap(row)
    click.echo(f"account:     {row['name']} (id {row['id']})")
    click.echo(f"plan:        {row['plan']}")
    click.echo(f"monthly cap: {'none' if cap is None else cap}")
    click.echo("tokens:")
    table(tokens.listing(db, row["id"]), ["id", "prefix", "name", "rpm", "created", "revoked"])


@accounts.command("plan")
@click.argument("account")
@click.argument("plan", type=click.Choice(lib.PLANS))
@pass_paths
def plan(paths, account, plan):
    """Move ACCOUNT to another plan (free: 10,000 requests a month; pro: no cap).

    \b
    Example:
      metrion accounts plan acme pro
    """
    row = lib.set_plan(open_db(paths), account, plan)
    cap = lib.monthly_cap(row)
    click.echo(f"account {row['name']} is on plan {row['plan']} (monthly cap: {'none' if cap is None else cap})")


def register(cli):
    cli.add_command(accounts)
