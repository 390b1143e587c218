"""Every route of `overhaul serve` against random requests: methods, path segments, JSON of random shapes, depths
and sizes, bytes that are not JSON or not UTF-8, odd headers. Whatever comes in, nothing answers 5xx (but 503,
which a storage or engine problem may honestly give) and the log holds no traceback."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from overhaul.adapters.http.app import ARM_ROUTES
from tests.builders import API_MODEL, GALLERY, VMSS, publish
from tests.serve import Served, serve_in_process

API_VERSIONS = ["2021-03-01", "2024-07-01", "", "1999-01-01", "2021-13-99", "x" * 300, "2021-03-01-preview"]
METHODS = ["GET", "PUT", "PATCH", "POST", "DELETE", "HEAD", "OPTIONS", "TRACE", "FOO"]
NAMES = st.one_of(
    st.sampled_from(["myScaleSet", "myGallery", "myImage", "1.0.0", "0", "lbA", "p", "local", "myResourceGroup"]),
    st.text(min_size=1, max_size=80).map(lambda t: "".join(f"%{b:02X}" for b in t.encode("utf-8"))),
    st.from_regex(r"[A-Za-z0-9._~-]{1,300}", fullmatch=True),
)
JSON: Any = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=20), children, max_size=6),
    max_leaves=40,
)


def azure_shaped(doc: Any) -> Any:
    """Random values under Azure's own keys, so the parsers' deeper branches are reached, not only the first check."""
    return {
        "location": "local",
        "sku": {"name": "Standard_Container", "capacity": doc if isinstance(doc, int) else 1},
        "properties": {
            "upgradePolicy": doc,
            "virtualMachineProfile": {"storageProfile": doc, "extensionProfile": {"extensions": [doc]}},
            "probes": [doc],
            "identifier": doc,
            "storageProfile": {"source": {"overhaul": doc}},
            "publishingProfile": doc,
        },
        "instanceIds": doc,
        "tags": doc,
    }


BODIES = st.one_of(
    st.none(),
    JSON.map(lambda d: json.dumps(d).encode()),
    JSON.map(lambda d: json.dumps(azure_shaped(d)).encode()),
    st.binary(max_size=300),
    st.integers(1, 3000).map(lambda n: ('{"a": ' * n + "1" + "}" * n).encode()),
    st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n),
    st.just(b'{"location": "' + b"x" * 200_000 + b'"}'),
    st.just(b"\xff\xfe{\x00}"),
)


def fill(template: str, values: list[str]) -> str:
    parts = iter(values)
    return re.sub(r"\{[a-z_]+\}", lambda _: next(parts), template)


@st.composite
def requests(draw: st.DrawFn, token: str) -> bytes:
    template = draw(st.sampled_from([path for _, path, _ in ARM_ROUTES] + ["/healthz", "/metrics", "/nope"]))
    holes = len(re.findall(r"\{[a-z_]+\}", template))
    path = fill(template, [draw(NAMES) for _ in range(holes)])
    version = draw(st.sampled_from(API_VERSIONS))
    query = draw(st.sampled_from([f"?api-version={version}", "", f"?api-version={version}&x=%ff", "?%%%"]))
    method = draw(st.sampled_from(METHODS))
    body = draw(BODIES)
    auth = draw(
        st.sampled_from(
            [f"Bearer {token}"] * 6 + ["Bearer", "Bearer \xff\xfe", "Basic eA==", f"bearer {token}", "", token]
        )
    )
    head = [f"{method} {path}{query} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    if auth:
        head.append(f"Authorization: {auth}")
    head.append(draw(st.sampled_from(["Content-Type: application/json", "Content-Type: text/plain", "X-Other: 1"])))
    if body is not None:
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1", "replace") + (body or b"")


def send(served: Served, raw: bytes) -> int:
    host, port = served.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(raw)
        answer = b""
        while b"\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    status_line = answer.split(b"\r\n", 1)[0].decode("latin-1")
    match = re.match(r"HTTP/1\.[01] (\d{3})", status_line)
    assert match, f"no HTTP answer to {raw[:300]!r}: {answer[:300]!r}"
    return int(match.group(1))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    state = tmp_path_factory.mktemp("fuzz") / "state"
    with serve_in_process(state, "--engine", "memory", "--max-body-bytes", "100000") as running:
        identifier = {"publisher": "Canonical", "offer": "0001-com-ubuntu-server-jammy", "sku": "22_04-lts"}
        running.call("PUT", f"{GALLERY}?api-version=2021-03-01", {"properties": {"identifier": identifier}})
        publish(running, "1.0.0")
        running.call("PUT", f"{VMSS}?api-version=2021-03-01", API_MODEL)
        yield running
    log = Path(running.log).read_text()
    assert "Traceback" not in log, log[-4000:]


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(data=st.data())
def test_no_request_gets_a_server_error(served: Served, data: st.DataObject) -> None:
    raw = data.draw(requests(served.token))
    status = send(served, raw)
    assert status < 500 or status == 503, f"{status} for {raw[:500]!r}"
