"""The control server and `callwatch status` against a running tree."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import anyio
import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from actors.control import Control, ControlConfigError
from messages.settings import Secret
from supervisors import ChildSpec, Tree, dynamic_supervisor, start_child, supervisor, worker
from tests.runtime.probe import Probe

pytestmark = pytest.mark.anyio


def control_tree(bound: list[str], **kw: Any) -> Tree:
    args: dict[str, Any] = {"port": 0, "on_bound": bound.append, "registry": CollectorRegistry()}
    args.update(kw)
    return Tree(
        supervisor(
            "root",
            [
                supervisor("store", [worker("redis", Probe, log=[])]),
                dynamic_supervisor("users"),
                ChildSpec(name="control", actor=Control, args=args),
            ],
        )
    )


async def get(url: str, **kw: Any) -> httpx.Response:
    async with httpx.AsyncClient(timeout=5.0) as client:
        return await client.get(url, **kw)


async def test_status_livez_readyz_metrics() -> None:
    bound: list[str] = []

    async def ok() -> bool:
        return True

    async def down() -> bool:
        return False

    tree = control_tree(
        bound,
        probes={"redis": ok, "postgres": down},
        ready_actors={"feed": "redis", "telegram": "bot"},
    )
    async with tree.running():
        await start_child(tree.lookup("users"), worker("user:7", Probe, log=[]))
        url = bound[0]
        status = await get(f"{url}/status")
        assert status.status_code == 200
        paths = [n["path"] for n in _walk(status.json()["tree"])]
        assert {"root", "root/store/redis", "root/users/user:7", "root/control"} <= set(paths)
        live = await get(f"{url}/livez")
        assert live.status_code == 200 and live.json()["ok"]
        ready = await get(f"{url}/readyz")
        assert ready.status_code == 503
        checks = ready.json()["checks"]
        assert checks == {"redis": True, "postgres": False, "feed": True, "telegram": False}
        metrics = await get(f"{url}/metrics")
        families = {f.name: f for f in text_string_to_metric_families(metrics.text)}
        restarts = families["callwatch_actor_restarts"]
        labels = {s.labels["actor"] for s in restarts.samples}
        assert "root/users/*" in labels
        assert not any("user:7" in label for label in labels), "no user ids as labels"


def _walk(node: dict[str, Any]) -> list[dict[str, Any]]:
    out = [node]
    for child in node["children"]:
        out += _walk(child)
    return out


async def test_admin_endpoint_needs_the_token() -> None:
    bound: list[str] = []
    calls: list[dict[str, Any]] = []

    async def admin(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        calls.append(body)
        return 200, {"ok": True}

    tree = control_tree(bound, token=Secret("control-secret-1"), admin=admin)
    async with tree.running(), httpx.AsyncClient(timeout=5.0) as client:
        url = bound[0] + "/admin"
        assert (await client.post(url, json={"command": "stats"})).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert (await client.post(url, json={}, headers=wrong)).status_code == 401
        good = {"Authorization": "Bearer control-secret-1"}
        assert (
            await client.post(
                url, content=b"{", headers=good | {"Content-Type": "application/json"}
            )
        ).status_code == 400
        assert (
            await client.post(url, content=b"x", headers=good | {"Content-Type": "text/plain"})
        ).status_code == 415
        assert (
            await client.post(
                url, content=b"x" * 100_000, headers=good | {"Content-Type": "application/json"}
            )
        ).status_code == 413
        ok = await client.post(url, json={"command": "stats"}, headers=good)
        assert ok.status_code == 200 and calls == [{"command": "stats"}]
        assert (await client.get(bound[0] + "/status")).status_code == 401


async def test_binding_beyond_loopback_needs_a_token() -> None:
    with pytest.raises(ControlConfigError):
        Control(host="0.0.0.0")
    Control(host="0.0.0.0", token=Secret("t0ken-value"))


async def test_status_cli_against_a_running_instance(tmp_path: Any) -> None:
    bound: list[str] = []
    tree = control_tree(bound)
    async with tree.running():
        url = bound[0]
        args = [sys.executable, "-m", "callwatch.cli", "status", "--json", "--url", url]
        result = await anyio.run_process(args, check=False, env=_env(tmp_path))
        assert result.returncode == 0, result.stderr.decode()
        body = json.loads(result.stdout)
        paths = {n["path"] for n in _walk(body["tree"])}
        assert {"root", "root/store", "root/store/redis", "root/users", "root/control"} == paths
        pretty = await anyio.run_process(
            [sys.executable, "-m", "callwatch.cli", "status", "--url", url],
            check=False,
            env=_env(tmp_path),
        )
        assert pretty.returncode == 0 and b"redis" in pretty.stdout


def test_status_cli_without_instance_fails_clearly(tmp_path: Any) -> None:
    args = [sys.executable, "-m", "callwatch.cli", "status", "--url", "http://127.0.0.1:9"]
    result = subprocess.run(args, capture_output=True, env=_env(tmp_path), check=False)
    assert result.returncode == 1
    assert b"no callwatch instance answers" in result.stdout + result.stderr


def test_bad_setting_exits_2_naming_it(tmp_path: Any) -> None:
    env = _env(tmp_path) | {"CALLWATCH_SENDER_GLOBAL_RATE": "fast"}
    result = subprocess.run(
        [sys.executable, "-m", "callwatch.cli", "status"], capture_output=True, env=env, check=False
    )
    assert result.returncode == 2
    assert b"CALLWATCH_SENDER_GLOBAL_RATE" in result.stderr


def _env(tmp_path: Any) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLWATCH_")}
    env["CALLWATCH_DATA_DIR"] = str(tmp_path)
    env["NO_PROXY"] = "127.0.0.1,localhost"
    return env


def test_run_refuses_a_public_control_server_without_a_token(tmp_path: Any) -> None:
    env = _env(tmp_path) | {"CALLWATCH_CONTROL_HOST": "0.0.0.0"}
    result = subprocess.run(
        [sys.executable, "-m", "callwatch.cli", "run"],
        capture_output=True,
        env=env,
        check=False,
        timeout=60,
    )
    assert result.returncode == 2
    assert b"CALLWATCH_CONTROL_TOKEN" in result.stdout + result.stderr


def test_run_needs_a_bot_token_and_a_feed(tmp_path: Any) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "callwatch.cli", "run"],
        capture_output=True,
        env=_env(tmp_path),
        check=False,
        timeout=60,
    )
    assert result.returncode == 2
    output = result.stdout + result.stderr
    assert b"CALLWATCH_TELEGRAM_BOT_TOKEN" in output and b"CALLWATCH_FEED_URL" in output
