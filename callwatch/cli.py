"""The ``callwatch`` command: run, demo, status, admin, db, sandbox.

Every subcommand loads settings the same way; a bad setting exits with status 2 and
names it, before anything starts.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, NoReturn

import anyio
import click

from messages.settings import Settings
from runtime.logs import configure_logging
from runtime.settings import EXIT_BAD_SETTINGS, SettingsError, load_settings


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"callwatch: {message}", err=True)
    sys.exit(code)


def settings_from(config: Path | None, **overrides: Any) -> Settings:
    """Load settings or exit with status 2 naming the bad one."""
    try:
        return load_settings(Settings, file=config, overrides=overrides or None)
    except SettingsError as exc:
        fail(str(exc), EXIT_BAD_SETTINGS)


def run_async(main: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run on asyncio with uvloop (production's loop); Ctrl-C stops cleanly."""
    try:
        return anyio.run(main, backend="asyncio", backend_options={"use_uvloop": True})
    except KeyboardInterrupt:
        click.echo("callwatch: interrupted", err=True)
        return None


config_option = click.option(
    "--config",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="TOML settings file (default: $CALLWATCH_CONFIG).",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """callwatch: filtered, rate-limited crypto call notifications on Telegram."""


@main.command()
@config_option
def run(config: Path | None) -> None:
    """Run the service (production entry point: real Telegram and feed from settings)."""
    from callwatch.service import run_service

    settings = settings_from(config)
    configure_logging(settings.log_level, settings.log_format, secrets=settings.secrets())
    code = run_async(lambda: run_service(settings))
    sys.exit(code or 0)


@main.command()
@config_option
@click.option("--duration", type=float, default=None, help="Stop after N seconds (headless).")
@click.option(
    "--summary",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write a JSON summary of what happened to FILE.",
)
@click.option("--data-dir", type=click.Path(path_type=Path), default=None)
def demo(
    config: Path | None, duration: float | None, summary: Path | None, data_dir: Path | None
) -> None:
    """Run the whole system against the sandbox on embedded Redis and PostgreSQL."""
    from callwatch.demo import run_demo

    overrides = {"data_dir": str(data_dir)} if data_dir else {}
    settings = settings_from(config, **overrides)
    code = run_async(lambda: run_demo(settings, duration=duration, summary=summary))
    sys.exit(code or 0)


@main.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print the snapshot as JSON.")
@click.option("--watch", is_flag=True, help="Refresh in place until Ctrl-C.")
@click.option("--url", default=None, help="Control server URL (default: from settings).")
def status(config: Path | None, as_json: bool, watch: bool, url: str | None) -> None:
    """Show the running instance's supervision tree and health."""
    from callwatch.status import show_status

    settings = settings_from(config)
    sys.exit(show_status(settings, url=url, as_json=as_json, watch=watch))


def _register_admin() -> None:
    from callwatch.admin_cli import admin_command

    main.add_command(admin_command)


_register_admin()


@main.group()
def db() -> None:
    """Database schema: migrate, status."""


@db.command("migrate")
@config_option
def db_migrate(config: Path | None) -> None:
    """Apply pending migrations."""
    from callwatch.dbcli import migrate_command

    settings = settings_from(config)
    sys.exit(run_async(lambda: migrate_command(settings)) or 0)


@db.command("status")
@config_option
def db_status(config: Path | None) -> None:
    """Show applied and pending migrations."""
    from callwatch.dbcli import status_command

    settings = settings_from(config)
    sys.exit(run_async(lambda: status_command(settings)) or 0)


@main.group()
def sandbox() -> None:
    """Loopback stand-ins for the outside world."""


@sandbox.command("feed")
@click.option("--host", default="127.0.0.1")
@click.option("--port", type=int, default=8765)
@click.option("--rate", type=float, default=50.0, help="Events per second.")
@click.option("--seed", type=int, default=0)
def sandbox_feed(host: str, port: int, rate: float, seed: int) -> None:
    """Run the sandbox signal feed (socket.io)."""
    from sandbox.feed.server import serve

    def ready(server: Any) -> None:
        click.echo(f"sandbox feed on {server.url} at {rate:g} events/s (Ctrl-C stops)")

    run_async(lambda: serve(host=host, port=port, rate=rate, seed=seed, on_ready=ready))


@sandbox.command("telegram")
@click.option("--host", default="127.0.0.1")
@click.option("--port", type=int, default=8081)
@click.option("--no-limits", is_flag=True, help="Do not enforce Telegram's flood limits.")
def sandbox_telegram(host: str, port: int, no_limits: bool) -> None:
    """Run the Telegram Bot API emulator (with a web chat page)."""
    from sandbox.telegram.server import serve

    def ready(emulator: Any) -> None:
        click.echo(f"Bot API emulator at {emulator.base_url}; web chat at {emulator.web_url}")

    run_async(lambda: serve(host, port, on_ready=ready, enforce_limits=not no_limits))


if __name__ == "__main__":
    main()
