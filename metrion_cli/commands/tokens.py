import click

from .. import accounts, tokens as lib
from . import open_db, pass_paths, table


def _rpm(value):
    """None: the account's limit applies; "none": no limit (stored as 0)."""
    if value is None:
        return None
    if value == "none":
        return 0
    if not value.isdigit() or int(value) < 1:
        raise click.BadParameter("expected a positive number of requests per minute, or none")
    return int(value)


@click.group()
def tokens():
    """Metrion tokens (mtr_...): what applications use as their API key.

    \b
    Example:
      metrion tokens create acme --name billing-service
      metrion tokens revoke mtr_Ab12Cd34
    """


@tokens.command("create")
@click.argument("account")
@click.option("--name", help="A label, e.g. the application using it.")
@click.option("--rpm", help="Requests per minute for this token, or none for no limit "
              "(default: the account's limit, else 100).")
@click.option("--quiet", "-q", is_flag=True, help="Print only the token.")
@pass_paths
def create(paths, account, name, rpm, quiet):
    """Create a token for ACCOUNT. It is shown once: only its hash is stored.

    \b
    Example:
      metrion tokens create acme --name billing-service
    """
    db = open_db(paths)
    token, row = lib.create(db, accounts.get(db, account)["id"], name, _rpm(rpm))
    if quiet:
        click.echo(token)
        return
    click.echo(token)
    click.echo(f"token {row['id']} ({row['prefix']}...) for account {account}; "
               "shown only now, store it safely", err=True)


@tokens.command("list")
@click.option("--account", help="Only this account's tokens.")
@pass_paths
def list_(paths, account):
    """List tokens (prefixes only; the tokens themselves are not stored).

    \b
    Example:
      metrion tokens list --account acme
    """
    db = open_db(paths)
    account_id = accounts.get(db, account)["id"] if account else None
    table(lib.listing(db, account_id), ["id", "prefix", "account", "name", "rpm", "created", "revoked"])


@tokens.command("revoke")
@click.argument("token")
@pass_paths
def revoke(paths, token):
    """Revoke a token by id or prefix; the running proxy refuses it within a second.

    \b
    Example:
      metrion tokens revoke mtr_Ab12Cd34
    """
    row = lib.revoke(open_db(paths), token)
    click.echo(f"token {row['id']} ({row['prefix']}...) revoked at {row['revoked']}")


@tokens.command("rotate")
@click.argument("token")
@click.option("--quiet", "-q", is_flag=True, help="Print only the new token.")
@pass_paths
def rotate(paths, token, quiet):
    """Replace a token: a new one is printed and the old one is revoked at once.

    \b
    Example:
      metrion tokens rotate 3
    """
    new, row = lib.rotate(open_db(paths), token)
    click.echo(new)
    if not quiet:
        click.echo(f"token {row['id']} ({row['prefix']}...) replaces the revoked one", err=True)


def register(cli):
    cli.add_command(tokens)
