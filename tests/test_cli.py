"""The `metrion` command as an operator uses it (CliRunner, a temporary data directory)."""

import os
import stat
import subprocess

import pytest

from conftest import VENV_BIN, assert_no_secrets
from metrion_cli.cli import cli


def test_init_is_idempotent_and_keeps_secrets_out_of_data(run_cli, data_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("METRION_SECRET_KEY")
    key_file = tmp_path / "config" / "secret.key"
    monkeypatch.setenv("METRION_SECRET_KEY_FILE", str(key_file))
    first = run_cli("init").output
    second = run_cli("init").output
    assert first == second
    assert (data_dir / "metrion.db").exists() and (data_dir / "vault.db").exists()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((data_dir / "vault.db").stat().st_mode) == 0o600
    assert not key_file.is_relative_to(data_dir)
    assert (data_dir / "mitmproxy" / "mitmproxy-ca-cert.pem").exists()


def test_tokens_are_stored_only_as_hashes(run_cli, data_dir, secrets_used):
    run_cli("init")
    run_cli("accounts", "add", "acme", "--plan", "pro")
    token = run_cli("tokens", "create", "acme", "--name", "svc", "--quiet").output.strip()
    assert token.startswith("mtr_") and len(token) > 40
    listing = run_cli("tokens", "list").output
    assert token[:12] in listing and token not in listing
    assert_no_secrets([token], [data_dir], "")
    shown = run_cli("accounts", "show", "acme").output
    assert "plan:        pro" in shown and "monthly cap: none" in shown


def test_rotate_revokes_the_old_token_at_once(run_cli):
    run_cli("init")
    run_cli("accounts", "add", "acme")
    old = run_cli("tokens", "create", "acme", "--quiet").output.strip()
    new = run_cli("tokens", "rotate", old[:12], "--quiet").output.strip()
    assert new != old and new.startswith("mtr_")
    rows = {r.split()[1]: r for r in run_cli("tokens", "list").output.splitlines()[1:]}
    assert "Z" in rows[old[:12]].split()[-1]     # revoked timestamp
    assert rows[new[:12]].rstrip().endswith("Z") and len(rows[new[:12]].split()) == len(rows[old[:12]].split()) - 1
    result = run_cli("tokens", "rotate", old[:12], ok=False)
    assert result.exit_code == 1 and "already revoked" in result.output


def test_keys_are_read_from_stdin_and_shown_by_last4_only(run_cli, data_dir):
    key = "sk-test-stdin-key-9876"
    run_cli("init")
    run_cli("accounts", "add", "acme")
    assert "...9876" in run_cli("keys", "add", "acme", "openai", input=key + "\n").output
    listing = run_cli("keys", "list").output
    assert "...9876" in listing and key not in listing
    assert_no_secrets([key], [data_dir], listing)
    assert run_cli("keys", "list", "--count").output.strip() == "1"
    run_cli("keys", "remove", "acme", "openai")
    assert run_cli("keys", "list", "--count").output.strip() == "0"
    result = run_cli("keys", "remove", "acme", "openai", ok=False)
    assert result.exit_code == 1 and "has no stored openai key" in result.output


@pytest.mark.parametrize("command", [("keys", "add"), ("keys", "register")])
def test_a_metrion_token_is_refused_as_a_provider_key(run_cli, data_dir, command):
    """Stored, it would be sent upstream as the key: a token pasted by mistake."""
    run_cli("init")
    run_cli("accounts", "add", "acme")
    token = run_cli("tokens", "create", "acme", "--quiet").output.strip()
    result = run_cli(*command, "acme", "openai", input=token + "\n", ok=False)
    assert result.exit_code == 1
    assert "that is a Metrion token (mtr_...), not a provider key" in result.output
    assert token not in result.output
    assert run_cli("keys", "list", "--count").output.strip() == "0"


def test_key_is_never_taken_from_argv():
    command = cli.commands["keys"].commands["add"]
    assert [p.name for p in command.params] == ["account", "provider"]


@pytest.mark.parametrize("args, message", [
    (["accounts", "add", "acme"], "already exists"),
    (["tokens", "create", "nobody"], "no account 'nobody'"),
    (["tokens", "revoke", "mtr_missing"], "no token"),
    (["accounts", "add", "x", "--plan", "gold"], "Invalid value"),
])
def test_user_errors_are_one_clear_line(run_cli, args, message):
    run_cli("init")
    run_cli("accounts", "add", "acme")
    result = run_cli(*args, ok=False)
    assert result.exit_code != 0 and message in result.output
    assert "Traceback" not in result.output


def test_commands_need_init_first(run_cli):
    result = run_cli("accounts", "list", ok=False)
    assert result.exit_code == 1 and "run `metrion init`" in result.output


def test_every_command_and_group_has_help_with_an_example(run_cli):
    for group_name, group in cli.commands.items():
        assert "Example" in run_cli(group_name, "--help").output, group_name
        for name in getattr(group, "commands", {}):
            assert "Example" in run_cli(group_name, name, "--help").output, (group_name, name)


def test_wrong_master_key_stops_serve_with_one_line(run_cli, monkeypatch):
    run_cli("init")
    from metrion_cli.vault import format_key
    env = dict(os.environ, METRION_SECRET_KEY=format_key(1, b"\x01" * 32))
    proc = subprocess.run([str(VENV_BIN / "metrion"), "serve", "--port", "openai=0"],
                          env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert "METRION_SECRET_KEY" in proc.stderr and "Traceback" not in proc.stderr + proc.stdout
    listing = subprocess.run([str(VENV_BIN / "metrion"), "keys", "list"], env=env,
                             capture_output=True, text=True, timeout=30)
    assert listing.returncode == 1 and listing.stderr.count("\n") == 1
    assert "does not match" in listing.stderr


def test_serve_reports_errors_for_its_own_data_dir(run_cli, data_dir, tmp_path):
    # --data-dir, not METRION_DATA_DIR: the error must name that directory and its cause, not
    # the default ./data that mitmproxy falls back to when an option update fails.
    run_cli("init")
    from metrion_cli.vault import format_key
    env = dict(os.environ, METRION_SECRET_KEY=format_key(1, b"\x01" * 32))
    env.pop("METRION_DATA_DIR")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.run([str(VENV_BIN / "metrion"), "--data-dir", str(data_dir), "serve", "--port", "openai=0"],
                          env=env, capture_output=True, text=True, timeout=30, cwd=elsewhere)
    assert proc.returncode == 1
    assert str(data_dir) in proc.stderr and "does not match" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
