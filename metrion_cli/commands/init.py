import click

from .. import accounts, db as dbmod
from ..paths import default_secret_key_file
from ..vault import Vault, load_keyring
from . import pass_paths


@click.command()
@pass_paths
def init(paths):
    """Create the databases, the master key and the CA; safe to run again.

    \b
    Example:
      metrion --data-dir /var/lib/metrion init
    """
    import os

    # A new master key only for a new vault: one made for an existing vault could never open it.
    new_vault = not paths.vault_db.exists()
    load_keyring(create=new_vault)
    dbmod.initialise(paths)
    source = "METRION_SECRET_KEY" if os.environ.get("METRION_SECRET_KEY") else str(default_secret_key_file())
    Vault.open(paths)  # registers the key on a new vault, checks it on an existing one
    db = dbmod.open_metrion(paths)
    accounts.ensure(db, accounts.DEFAULT_ACCOUNT)
    _make_ca(paths.confdir)
    click.echo(f"data directory: {paths.data_dir}")
    click.echo(f"master key:     {source}")
    click.echo(f"CA certificate: {paths.confdir / 'mitmproxy-ca-cert.pem'}")


def _make_ca(confdir) -> None:
    from mitmproxy.certs import CertStore

    confdir.mkdir(parents=True, exist_ok=True)
    CertStore.from_store(confdir, "mitmproxy", 2048)


def register(cli):
    cli.add_command(init)
