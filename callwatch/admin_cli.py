"""``callwatch admin <command> ...``: run an admin command on the running instance.

The command goes to the control server's ``POST /admin`` with the control token (the
same commands as ``/admin`` in Telegram; ``callwatch admin help`` lists them). Arguments
are given by position as in Telegram (``callwatch admin grant @bob monthly``) or by name
(``--arg days=7``). The reply is printed as text (``--json`` for the raw JSON); the exit
status is 0 when the command was carried out, 1 when it was refused or no instance
answers, 2 for a command line that cannot be understood.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import anyio
import click
import httpx

from messages.admin import ADMIN_COMMANDS, AUDIENCES, AdminInputError, decode_admin_body

__all__ = ["AdminCliError", "admin_cli", "admin_command", "args_from_words"]

TIMEOUT_S = 60.0


class AdminCliError(Exception):
    """No instance answered, or it refused the token."""


async def admin_cli(
    url: str,
    token: str | None,
    command: str,
    args: dict[str, Any],
    *,
    client: httpx.AsyncClient | None = None,
) -> dict[str, Any]:
    """POST one admin command; the JSON reply with ``http_status`` added.

    Pass a ``client`` to reuse one connection for many calls (each new client loads the
    system's CA certificates, which is slow). Raises `AdminCliError` when nothing answers
    at ``url`` or the answer is not a JSON object.
    """
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    body = json.dumps({"command": command, "args": args}).encode()
    target = f"{url.rstrip('/')}/admin"
    try:
        if client is not None:
            response = await client.post(target, content=body, headers=headers)
        else:
            async with httpx.AsyncClient(timeout=TIMEOUT_S) as own:
                response = await own.post(target, content=body, headers=headers)
    except httpx.HTTPError as exc:
        raise AdminCliError(
            f"no callwatch instance answers at {url} ({type(exc).__name__})"
        ) from exc
    try:
        reply = response.json()
    except ValueError:
        raise AdminCliError(
            f"{url}/admin answered HTTP {response.status_code} without JSON"
        ) from None
    if not isinstance(reply, dict):
        raise AdminCliError(f"{url}/admin answered something that is not a JSON object")
    reply["http_status"] = response.status_code
    return reply


def args_from_words(command: str, words: tuple[str, ...], pairs: tuple[str, ...]) -> dict[str, Any]:
    """Positional words (as in Telegram) and ``key=value`` pairs as the command's args."""
    name, _ = decode_admin_body({"command": command})
    spec = ADMIN_COMMANDS[name]
    args: dict[str, Any] = {}
    rest = list(words)
    if name == "broadcast" and rest and rest[0].lower() in AUDIENCES:
        args["audience"] = rest.pop(0).lower()
    for key in spec.positional:
        if rest and "=" not in rest[0]:
            args[key] = rest.pop(0)
    leftovers: list[str] = []
    for word in rest:
        key, eq, value = word.partition("=")
        if eq and key and spec.rest is None:
            args[key.strip().lower()] = value
        else:
            leftovers.append(word)
    if leftovers:
        if spec.rest is None:
            raise AdminInputError(f"unexpected argument {leftovers[0]!r}; use --arg name=value")
        args[spec.rest] = " ".join(leftovers)
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key.strip():
            raise AdminInputError(f"--arg takes name=value, not {pair!r}")
        args[key.strip().lower()] = value
    return args


def _print(reply: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(reply, indent=2, sort_keys=True))
        return
    text = reply.get("text") or reply.get("error") or ""
    click.echo(text if reply.get("ok") else f"callwatch admin: {text}", err=not reply.get("ok"))


@click.command("admin", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("command")
@click.argument("words", nargs=-1)
@click.option("--arg", "-a", "pairs", multiple=True, metavar="NAME=VALUE", help="A named argument.")
@click.option("--url", default=None, help="Control server URL (default: the running instance).")
@click.option(
    "--config",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="TOML settings file (default: $CALLWATCH_CONFIG).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the reply as JSON.")
@click.option("--wait", is_flag=True, help="broadcast: follow the progress until it is done.")
def admin_command(
    command: str,
    words: tuple[str, ...],
    pairs: tuple[str, ...],
    url: str | None,
    config: Path | None,
    as_json: bool,
    wait: bool,
) -> None:
    """Run an admin command (`callwatch admin help` lists them)."""
    from callwatch.cli import settings_from
    from callwatch.status import control_url

    settings = settings_from(config)
    try:
        args = args_from_words(command, words, pairs)
    except AdminInputError as exc:
        click.echo(f"callwatch admin: {exc.reason}", err=True)
        sys.exit(2)
    where = control_url(settings, url)
    token = settings.control.token.reveal() if settings.control.token else None

    async def session() -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=TIMEOUT_S) as client:
            reply = await admin_cli(where, token, command, args, client=client)
            _print(reply, as_json)
            data = reply.get("data")
            broadcast = data.get("id") if isinstance(data, dict) else None
            while (
                wait and reply.get("ok") and broadcast and reply["data"].get("state") == "running"
            ):
                await anyio.sleep(1.0)
                reply = await admin_cli(
                    where, token, "broadcast_status", {"id": broadcast}, client=client
                )
                _print(reply, as_json)
            return reply

    try:
        reply = anyio.run(session)
    except AdminCliError as exc:
        click.echo(f"callwatch admin: {exc}", err=True)
        click.echo("Start it with `callwatch run` (or `make demo`).", err=True)
        sys.exit(1)
    if reply.get("http_status") == 403 and not token:
        click.echo(
            "Set CALLWATCH_CONTROL_TOKEN: admin over HTTP needs the control token.", err=True
        )
    sys.exit(0 if reply.get("ok") else 1)
