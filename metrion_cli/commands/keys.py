import sys

import click

from .. import PROVIDER_NAMES, accounts
from ..tokens import TOKEN_PREFIX
from . import open_db, open_vault, pass_paths, table

provider_choice = click.Choice(PROVIDER_NAMES)


def read_secret(prompt: str) -> str:
    """From stdin when piped, else a hidden prompt: never from argv, where `ps` would show it."""
    value = sys.stdin.readline() if not sys.stdin.isatty() else click.prompt(prompt, hide_input=True)
    value = value.strip()
    if not value:
        raise click.ClickException("no key given on stdin")
    if value.startswith(TOKEN_PREFIX):
        raise click.ClickException(f"that is a Metrion token ({TOKEN_PREFIX}...), not a provider key")
    return value


@click.group()
def keys():
    """Provider keys: stored encrypted, or registered by fingerprint for pass-through.

    \b
    Example:
      printenv OPENAI_API_KEY | metrion keys add acme openai
      metrion keys list
    """


@keys.command("add")
@click.argument("account")
@click.argument("provider", type=provider_choice)
@pass_paths
def add(paths, account, provider):
    """Store ACCOUNT's key for PROVIDER, encrypted; read from stdin or a hidden prompt.

    \b
    Example:
      printenv OPENAI_API_KEY | metrion keys add acme openai
    """
    account_row = accounts.get(open_db(paths), account)
    key = read_secret(f"{provider} key for {account}")
    row = open_vault(paths).put(account_row["id"], provider, key)
    click.echo(f"stored {provider} key ...{row['last4']} for account {account}")


@keys.command("list")
@click.option("--count", is_flag=True, help="Print only how many keys are stored.")
@pass_paths
def list_(paths, count):
    """List stored keys (last 4 characters only) and registered pass-through fingerprints.

    \b
    Example:
      metrion keys list
    """
    db = open_db(paths)
    names = {a["id"]: a["name"] for a in accounts.listing(db)}
    rows = open_vault(paths).listing()
    if count:
        click.echo(len(rows))
        return
    for row in rows:
        row["account"] = names.get(row["account_id"], row["account_id"])
        row["key"] = f"...{row['last4']}"
    click.echo("stored keys:")
    table(rows, ["account", "provider", "key", "fingerprint", "created"])
    registered = list(db.query(
        "SELECT a.name AS account, r.provider, '...' || r.last4 AS key, r.fingerprint, r.created "
        "FROM registered_keys r JOIN accounts a ON a.id = r.account_id ORDER BY r.id"))
    click.echo("registered pass-through keys:")
    table(registered, ["account", "provider", "key", "fingerprint", "created"])


@keys.command("remove")
@click.argument("account")
@click.argument("provider", type=provider_choice)
@pass_paths
def remove(paths, account, provider):
    """Delete ACCOUNT's stored key for PROVIDER.

    \b
    Example:
      metrion keys remove acme openai
    """
    account_row = accounts.get(open_db(paths), account)
    if not open_vault(paths).remove(account_row["id"], provider):
        raise click.ClickException(f"account {account} has no stored {provider} key")
    click.echo(f"removed {provider} key of account {account}")


@keys.command("register")
@click.argument("account")
@click.argument("provider", type=provider_choice)
@pass_paths
def register_key(paths, account, provider):
    """Attribute pass-through requests made with a key to ACCOUNT; only its fingerprint is kept.

    \b
    Example:
      printenv OPENAI_API_KEY | metrion keys register acme openai
    """
    db = open_db(paths)
    account_row = accounts.get(db, account)
    key = read_secret(f"{provider} key to register for {account}")
    fingerprint = open_vault(paths).fingerprint(key)
    accounts.register_key(db, account_row["id"], provider, fingerprint, key[-4:])
    click.echo(f"registered {provider} key ...{key[-4:]} (fingerprint {fingerprint}) for {account}")


def register(cli):
    cli.add_command(keys)
