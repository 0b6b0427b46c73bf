"""`callwatch demo` end to end in a subprocess: the summary, and no secret anywhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

SECRETS = {
    "CALLWATCH_CONTROL_TOKEN": "ctl-SECRET-4f9a1c2e",
    "CALLWATCH_PAYMENTS_NOWPAYMENTS_API_KEY": "np-SECRET-77b3d0aa",
    "CALLWATCH_PAYMENTS_IPN_SECRET": "ipn-SECRET-19c8e5f0",
}


def _env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLWATCH_")}
    env.update(SECRETS)
    env["CALLWATCH_DATA_DIR"] = str(data_dir)
    env["NO_PROXY"] = "127.0.0.1,localhost"
    return env


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_demo_headless_summary_and_no_secret_leaks(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    summary = tmp_path / "summary.json"
    env = _env(data_dir)
    demo = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "callwatch.cli",
            "demo",
            "--duration",
            "30",
            "--summary",
            str(summary),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    outputs: list[str] = []
    try:
        runfile = data_dir / "callwatch.run.json"
        deadline = time.monotonic() + 90
        while not runfile.exists():
            assert demo.poll() is None, demo.communicate()
            assert time.monotonic() < deadline, "the demo never published its control URL"
            time.sleep(0.2)
        url = json.loads(runfile.read_text())["control_url"]
        auth = {"Authorization": f"Bearer {SECRETS['CALLWATCH_CONTROL_TOKEN']}"}
        time.sleep(8)
        status = httpx.get(f"{url}/status", headers=auth, timeout=10)
        metrics = httpx.get(f"{url}/metrics", headers=auth, timeout=10)
        assert status.status_code == 200 and metrics.status_code == 200
        assert httpx.get(f"{url}/status", timeout=10).status_code == 401
        ready = httpx.get(f"{url}/readyz", timeout=10)
        assert set(ready.json()["checks"]) == {"redis", "postgres", "feed", "telegram"}
        assert ready.json()["checks"]["redis"] and ready.json()["checks"]["telegram"]
        assert httpx.get(f"{url}/livez", timeout=10).status_code == 200
        outputs += [status.text, metrics.text]
        cli = subprocess.run(
            [sys.executable, "-m", "callwatch.cli", "status", "--json"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert cli.returncode == 0, cli.stderr
        paths = {n["path"] for n in _walk(json.loads(cli.stdout)["tree"])}
        assert {"root/store/redis", "root/feed/ingest", "root/sender-sup/sender"} <= paths
        outputs += [cli.stdout, cli.stderr]
        out, err = demo.communicate(timeout=180)
    finally:
        if demo.poll() is None:
            demo.kill()
    assert demo.returncode == 0, err.decode()[-2000:]
    outputs += [out.decode(), err.decode(), (data_dir / "demo.log").read_text()]
    result = json.loads(summary.read_text())
    assert result["events"] > 100
    assert result["notifications"] >= 1
    assert result["multiplier_alerts"] >= 1
    assert result["restarts"] >= 1
    assert result["health_alerts"] >= 1 and result["health_recoveries"] >= 1
    for name, secret in SECRETS.items():
        hits = [i for i, text in enumerate(outputs) if secret in text]
        assert not hits, f"{name} leaked into output #{hits}"


def _walk(node: dict) -> list[dict]:
    out = [node]
    for child in node["children"]:
        out += _walk(child)
    return out


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("when", ["running", "starting"])
def test_demo_stops_cleanly_on_sigint(tmp_path: Path, when: str) -> None:
    """Ctrl-C once the tree runs, or while the embedded servers are still starting (the
    signal is heard from the start, acted on once there is something to stop)."""
    import signal

    import psutil

    data_dir = tmp_path / "data"
    demo = subprocess.Popen(
        [sys.executable, "-m", "callwatch.cli", "demo", "--duration", "120"],
        env=_env(data_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        runfile = data_dir / "callwatch.run.json"
        ready = runfile if when == "running" else data_dir / "redis"
        deadline = time.monotonic() + 90
        while not ready.exists():
            assert demo.poll() is None, demo.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.2)
        demo.send_signal(signal.SIGINT)
        out, err = demo.communicate(timeout=60)
    finally:
        if demo.poll() is None:
            demo.kill()
    assert demo.returncode == 0, err.decode()[-2000:]
    assert b"demo finished" in out
    assert not runfile.exists()
    leftovers = [
        p.info["pid"]
        for p in psutil.process_iter(["pid", "cmdline"])
        if str(data_dir) in " ".join(p.info["cmdline"] or [])
    ]
    assert not leftovers, "embedded servers were left running"
