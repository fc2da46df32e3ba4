"""The `metrion` command: one group per noun, each command a thin call into the library."""

import sqlite3

import click

from . import db as dbmod
from .paths import resolve
from .vault import DecryptError, MasterKeyError


class MetrionGroup(click.Group):
    """Turns the library's expected failures into one clear line instead of a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (LookupError, ValueError, MasterKeyError, DecryptError, dbmod.NotInitialised) as e:
            raise click.ClickException(str(e)) from None
        except sqlite3.Error as e:  # locked past the busy timeout, a damaged file, a failed upgrade
            raise click.ClickException(f"database error: {e}") from None


@click.group(cls=MetrionGroup)
@click.version_option(package_name="metrion")
@click.option("--data-dir", envvar="METRION_DATA_DIR", default="data", show_default=True,
              type=click.Path(file_okay=False), help="Where metrion.db and vault.db live.")
@click.pass_context
def cli(ctx, data_dir):
    """Metrion: a self-hosted gateway in front of LLM provider APIs.

    \b
    Quick start:
      metrion init
      metrion accounts add acme
      metrion keys add acme openai        # paste the key at the prompt
      metrion tokens create acme          # prints mtr_... once
      metrion serve
    """
    ctx.obj = resolve(data_dir)


from .commands import (  # noqa: E402
    accounts, demo, export, init, integrate, keys, quota, serve, tokens, ui, vault)

for module in (init, accounts, tokens, keys, quota, vault, serve, demo, integrate, ui, export):
    module.register(cli)
