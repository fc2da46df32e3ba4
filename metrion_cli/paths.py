"""Where Metrion keeps its state: the data directory and the master key file."""

import os
from dataclasses import dataclass
from pathlib import Path

import click

DEFAULT_DATA_DIR = "data"


@dataclass(frozen=True)
class Paths:
    data_dir: Path

    @property
    def metrion_db(self) -> Path:
        return self.data_dir / "metrion.db"

    @property
    def vault_db(self) -> Path:
        return self.data_dir / "vault.db"

    @property
    def confdir(self) -> Path:
        """mitmproxy's CA lives here, beside the databases."""
        return self.data_dir / "mitmproxy"


def resolve(data_dir: str | os.PathLike | None = None) -> Paths:
    raw = data_dir or os.environ.get("METRION_DATA_DIR") or DEFAULT_DATA_DIR
    return Paths(Path(raw).expanduser().resolve())


def default_secret_key_file() -> Path:
    # Kept outside data/ so that a copy of the data directory (a backup, a bug report)
    # never carries the key that decrypts the vault.
    override = os.environ.get("METRION_SECRET_KEY_FILE")
    if override:
        return Path(override).expanduser()
    return Path(click.get_app_dir("metrion")) / "secret.key"
