"""Property tests: whatever is posted to the control server, never a 5xx and never an
admin command without the token (issue: unbreakable by input)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio.from_thread
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from actors.control import Control
from messages.settings import Secret
from supervisors import ChildSpec, Tree, supervisor

TOKEN = "control-token-5b1e"
CALLS: list[dict[str, Any]] = []


async def _admin(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    CALLS.append(body)
    return 200, {"ok": True}


@pytest.fixture(scope="module")
def control_url() -> Iterator[str]:
    bound: list[str] = []
    args = {
        "port": 0,
        "token": Secret(TOKEN),
        "admin": _admin,
        "on_bound": bound.append,
        "registry": CollectorRegistry(),
    }
    tree = Tree(supervisor("root", [ChildSpec(name="control", actor=Control, args=args)]))
    with (
        anyio.from_thread.start_blocking_portal() as portal,
        portal.wrap_async_context_manager(tree.running()),
    ):
        yield bound[0]


PATHS = st.sampled_from(["/status", "/metrics", "/livez", "/readyz", "/admin", "/nope", "/"])
METHODS = st.sampled_from(["GET", "POST", "PUT", "DELETE"])
# Header values cannot start or end with blanks on the wire (the client refuses them).
HEADER_VALUES = st.text(
    alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=60
).map(str.strip)
HEADERS = st.dictionaries(
    st.sampled_from(["Authorization", "Content-Type", "X-Forwarded-For", "Accept"]),
    HEADER_VALUES,
    max_size=3,
)
BODIES = st.one_of(
    st.binary(max_size=2_000),
    st.builds(lambda n: b"{" * n, st.integers(0, 70_000)),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
        max_leaves=10,
    ).map(lambda v: httpx.Request("POST", "http://x", json=v).content),
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(method=METHODS, path=PATHS, headers=HEADERS, body=BODIES)
def test_no_5xx_and_no_admin_without_token(
    control_url: str, method: str, path: str, headers: dict[str, str], body: bytes
) -> None:
    before = len(CALLS)
    response = httpx.request(
        method, control_url + path, headers=headers, content=body, timeout=10.0
    )
    assert response.status_code < 500 or (path == "/readyz" and response.status_code == 503)
    if headers.get("Authorization") != f"Bearer {TOKEN}":
        assert len(CALLS) == before, "an admin command got through without the token"


def test_forged_admin_calls_are_refused(control_url: str) -> None:
    before = len(CALLS)
    for auth in ("", "Basic abc", "Bearer control-token-5b1", "Bearer x" + TOKEN, TOKEN):
        response = httpx.post(
            control_url + "/admin", json={"command": "grant"}, headers={"Authorization": auth}
        )
        assert response.status_code == 401
    assert len(CALLS) == before
    ok = httpx.post(
        control_url + "/admin",
        json={"command": "stats"},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert ok.status_code == 200 and len(CALLS) == before + 1
