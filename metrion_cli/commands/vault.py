import click

from ..paths import default_secret_key_file
from . import open_vault, pass_paths


@click.group()
def vault():
    """The master key that encrypts stored provider keys.

    \b
    Example:
      metrion vault rotate
    """


@vault.command("rotate")
@pass_paths
def rotate(paths):
    """Make a new master key and re-encrypt every stored key with it, in one transaction.

    A running proxy keeps serving and picks the new key up from the key file on its next
    reload; the old key decrypts nothing afterwards.

    \b
    Example:
      metrion vault rotate
    """
    store = open_vault(paths)
    count = len(store.rows())
    version = store.rotate()
    click.echo(f"master key version {version} in {default_secret_key_file()}; "
               f"{count} stored key{'s' if count != 1 else ''} re-encrypted")


def register(cli):
    cli.add_command(vault)
