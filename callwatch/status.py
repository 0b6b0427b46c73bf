"""``callwatch status``: the running instance's supervision tree, at a glance."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec
from rich.console import Console, Group
from rich.live import Live
from rich.text import Text
from rich.tree import Tree as RichTree

from messages.settings import Settings
from messages.status import ActorStatus

STATE_STYLE = {
    "running": "green",
    "starting": "yellow",
    "restarting": "yellow",
    "stopping": "yellow",
    "crashed": "red",
    "stopped": "dim",
}


class NotRunning(Exception):
    """No instance answers at the control URL."""


def control_url(settings: Settings, url: str | None) -> str:
    if url:
        return url.rstrip("/")
    from callwatch.service import runfile

    path: Path = runfile(settings)
    try:
        data = json.loads(path.read_text())
        return str(data["control_url"]).rstrip("/")
    except (OSError, ValueError, KeyError):
        return f"http://{settings.control.host}:{settings.control.port}"


def fetch(settings: Settings, url: str) -> dict[str, Any]:
    headers = {}
    if settings.control.token:
        headers["Authorization"] = f"Bearer {settings.control.token.reveal()}"
    try:
        response = httpx.get(f"{url}/status", headers=headers, timeout=3.0)
    except httpx.HTTPError as exc:
        raise NotRunning(f"no callwatch instance answers at {url} ({type(exc).__name__})") from exc
    if response.status_code == 401:
        raise NotRunning(f"{url} refused the control token (set CALLWATCH_CONTROL_TOKEN)")
    if response.status_code != 200:
        raise NotRunning(f"{url}/status answered HTTP {response.status_code}")
    body: dict[str, Any] = response.json()
    return body


def _uptime(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


def _label(node: ActorStatus) -> Text:
    text = Text()
    text.append(node.name, style="bold")
    text.append(f" [{node.kind}] ", style="dim")
    text.append(node.state, style=STATE_STYLE.get(node.state, "white"))
    text.append(f"  restarts {node.restarts_recent}/{node.restarts_total}")
    if node.mailbox_capacity:
        ratio = node.mailbox_depth / node.mailbox_capacity
        style = "red" if ratio > 0.8 else "yellow" if ratio > 0.5 else ""
        text.append(f"  mailbox {node.mailbox_depth}/{node.mailbox_capacity}", style=style)
    text.append(f"  processed {node.processed}")
    if node.state == "running":
        text.append(f"  up {_uptime(node.uptime_s)}", style="dim")
    if node.last_error:
        text.append(f"\n  last error: {node.last_error[:160]}", style="red")
    return text


MAX_SHOWN_CHILDREN = 12


def render(body: dict[str, Any]) -> Group:
    root = msgspec.convert(body["tree"], ActorStatus)

    def add(parent: RichTree, node: ActorStatus) -> None:
        branch = parent.add(_label(node))
        children = node.children
        if node.kind == "dynamic_supervisor" and len(children) > MAX_SHOWN_CHILDREN:
            running = sum(1 for c in children if c.state == "running")
            for child in children[:MAX_SHOWN_CHILDREN]:
                add(branch, child)
            branch.add(Text(f"... {len(children)} children, {running} running", style="dim"))
            return
        for child in children:
            add(branch, child)

    tree = RichTree(_label(root))
    for child in root.children:
        add(tree, child)
    parts: list[Any] = [tree]
    health = body.get("health") or {}
    if health:
        lines = Text("health:", style="bold")
        for name, value in sorted(health.items()):
            state = value.get("state", value) if isinstance(value, dict) else value
            style = "red" if state == "firing" else "yellow" if state == "pending" else "green"
            lines.append(f"\n  {name}: ")
            lines.append(str(state), style=style)
            detail = value.get("detail") if isinstance(value, dict) else None
            if detail and state != "ok":
                lines.append(f" ({str(detail)[:120]})", style="dim")
        parts.append(lines)
    dead = body.get("dead_letters") or {}
    if dead:
        parts.append(Text(f"dead letters: {dead}", style="yellow"))
    parts.append(Text(f"loop lag {body.get('loop_lag_ms', 0)} ms", style="dim"))
    return Group(*parts)


def show_status(settings: Settings, *, url: str | None, as_json: bool, watch: bool) -> int:
    console = Console()
    where = control_url(settings, url)
    try:
        body = fetch(settings, where)
    except NotRunning as exc:
        console.print(f"[red]callwatch: {exc}[/red]")
        console.print("Start it with `callwatch run` (or `make demo`).")
        return 1
    if as_json:
        print(json.dumps(body, indent=2))
        return 0
    if not watch:
        console.print(render(body))
        return 0
    try:
        with Live(render(body), console=console, refresh_per_second=2) as live:
            while True:
                time.sleep(1.0)
                try:
                    live.update(render(fetch(settings, where)))
                except NotRunning as exc:
                    live.update(Text(f"callwatch: {exc}", style="red"))
    except KeyboardInterrupt:
        return 0
