"""`overhaul serve` against hostile and odd input, and its process rules: no 5xx for bad input, 408 for a body that
never arrives, one server per state directory, every setting reachable, a CLI that never loads the server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from overhaul.serve import build_parser
from overhaul.serve.settings import ServeSettings, load_settings, options
from tests.builders import API_MODEL, GALLERY, VMSS, publish
from tests.serve import API, Served, overhaul_serve, raw_request, serve_in_process


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    with serve_in_process(tmp_path / "state", "--engine", "memory", "--body-timeout", "1") as running:
        identifier = {"publisher": "Canonical", "offer": "0001-com-ubuntu-server-jammy", "sku": "22_04-lts"}
        status, _, _ = running.call("PUT", f"{GALLERY}?{API}", {"properties": {"identifier": identifier}})
        assert status == 201
        publish(running, "1.0.0")
        yield running


def overhaul(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`overhaul …` run to its end (a serve that refuses to start, a CLI call)."""
    return subprocess.run(
        [sys.executable, "-m", "overhaul.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_a_non_ascii_token_is_refused_not_crashed(served: Served) -> None:
    answer = raw_request(
        served, [f"GET {VMSS}?{API} HTTP/1.1", "Host: x", "Authorization: Bearer t\xf6ken\xe9", "Connection: close"]
    )
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]


@pytest.mark.parametrize(
    ("storage", "field"),
    [
        ("just a string", "properties.storageProfile"),
        ({"source": ["localhost/x:1"]}, "properties.storageProfile.source"),
        ({"source": {"overhaul": "localhost/x:1"}}, "properties.storageProfile.source.overhaul"),
    ],
)
def test_gallery_version_shapes_are_refused_naming_the_field(served: Served, storage: object, field: str) -> None:
    status, doc, _ = served.call("PUT", f"{GALLERY}/versions/2.0.0?{API}", {"properties": {"storageProfile": storage}})
    assert status == 400, doc
    assert doc["error"]["target"] == field


@pytest.mark.parametrize("ids", [["²"], ["1e3"], [True], ["-1"], "0", [["0"]], ["٣"]])
@pytest.mark.parametrize("call", ["reimage", "approveRollingUpgrade"])
def test_odd_instance_ids_get_400(served: Served, ids: object, call: str) -> None:
    status, _, _ = served.call("PUT", f"{VMSS}?{API}", API_MODEL)
    assert status == 201
    status, doc, _ = served.call("POST", f"{VMSS}/{call}?{API}", {"instanceIds": ids})
    assert status == 400, doc
    assert doc["error"]["target"] == "instanceIds"


def test_an_approval_with_no_deferred_upgrade_is_409_and_an_unknown_instance_400(served: Served) -> None:
    status, _, _ = served.call("PUT", f"{VMSS}?{API}", API_MODEL)
    assert status == 201
    status, doc, _ = served.call("POST", f"{VMSS}/approveRollingUpgrade?{API}", {"instanceIds": ["99"]})
    assert status == 400 and doc["error"]["target"] == "instanceIds", doc
    status, doc, _ = served.call("POST", f"{VMSS}/approveRollingUpgrade?{API}")
    assert status == 409 and doc["error"]["code"] == "NoDeferredRollingUpgrade", doc


def test_a_body_that_never_arrives_gets_408(served: Served) -> None:
    started = time.monotonic()
    answer = raw_request(
        served,
        [
            f"PUT {VMSS}?{API} HTTP/1.1",
            "Host: x",
            f"Authorization: Bearer {served.token}",
            "Content-Type: application/json",
            "Content-Length: 2000000",
        ],
        body=b'{"sku": {}',
    )
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert time.monotonic() - started < 8


def test_other_groups_and_subscriptions_do_not_see_a_scale_set(served: Served) -> None:
    assert served.call("PUT", f"{VMSS}?{API}", API_MODEL)[0] == 201
    other_group = VMSS.replace("myResourceGroup", "otherGroup")
    other_sub = VMSS.replace("subscription_id", "other_sub")
    assert served.call("GET", f"{other_group}?{API}")[0] == 404
    assert served.call("GET", f"{other_sub}?{API}")[0] == 404
    assert served.call("DELETE", f"{other_group}?{API}")[0] == 204  # ARM: nothing there to delete
    status, doc, _ = served.call("PUT", f"{other_group}?{API}", API_MODEL)
    assert status == 409 and doc["error"]["code"] == "ScaleSetNameInUse"
    shouting = VMSS.replace("myResourceGroup", "MYRESOURCEGROUP").replace("myScaleSet", "MYSCALESET")
    assert served.call("GET", f"{shouting}?{API}")[0] == 200  # ARM names compare case-blind
    assert served.call("GET", f"{VMSS.lower()}?{API}")[0] == 200  # and so do the path's own segments
    status, doc, _ = served.call("GET", f"{VMSS}/virtualMachines?{API}")
    assert status == 200 and len(doc["value"]) == 5  # nothing was deleted or moved


def test_healthz_reports_the_engine(served: Served) -> None:
    status, doc, _ = served.call("GET", "/healthz", token="")
    assert status == 200 and doc == {"status": "ok", "engine": "ok", "storage": "ok", "hosts": "ok"}


def test_a_second_serve_on_the_same_state_directory_exits_1(served: Served) -> None:
    result = overhaul("serve", "--state-dir", str(served.state_dir), "--engine", "memory", "--port", "0")
    assert result.returncode == 1
    assert str(served.state_dir) in result.stderr and f"pid {served.pid}" in result.stderr
    assert "Traceback" not in result.stderr


def test_every_setting_is_reachable_from_file_env_and_flags(tmp_path: Path) -> None:
    """Each option: the config file sets it, the environment overrides the file, a flag overrides both."""
    help_text = build_parser().format_help()
    parser = build_parser()
    for option in options():
        if option.key == "state_dir":
            continue
        assert f"--{option.flag}" in help_text and option.env in help_text
        kind = type(option.default)
        values = {bool: ("true", "false", "true"), int: ("7", "8", "9"), float: ("7.5", "8.5", "9.5")}.get(
            kind, ("a", "b", "c")
        )
        if option.key == "engine.engine":
            values = ("memory", "unix:///e.sock", "podman")
        if option.key == "log_level":
            values = ("debug", "warning", "error")
        if option.key == "log_format":
            values = ("json", "text", "json")
        if option.key == "engine.ulimits":
            values = ("nofile=1:2", "nofile=3:4", "nproc=5:6")
        if option.key == "http.tls":
            values = ("auto", "off", "auto")
        if option.key == "http.trusted_proxies":
            values = ("127.0.0.1", "::1", "10.0.0.1")
        pem_files = [tmp_path / f"{n}.pem" for n in "abcd"]
        for pem in pem_files:
            pem.touch()
        if option.key in ("http.tls_cert", "http.tls_key"):
            values = (str(pem_files[0]), str(pem_files[1]), str(pem_files[2]))
        section, _, name = option.key.rpartition(".")
        file_value = json.loads(values[0]) if kind is not str else values[0]
        doc: dict[str, Any] = {section: {name: file_value}} if section else {name: file_value}
        # A certificate goes with its key: the other one of the pair is set too.
        partner = {"tls_cert": "tls_key", "tls_key": "tls_cert"}.get(name)
        if partner:
            doc["http"][partner] = str(pem_files[3])
        config = tmp_path / "c.json"
        config.write_text(json.dumps(doc))

        def read(settings: ServeSettings, section: str = section, name: str = name) -> object:
            return getattr(getattr(settings, section), name) if section else getattr(settings, name)

        args = parser.parse_args(["--config", str(config)])
        assert str(read(load_settings(args, {}))).lower() == values[0], option.key
        assert str(read(load_settings(args, {option.env: values[1]}))).lower() == values[1], option.key
        args = parser.parse_args(["--config", str(config), f"--{option.flag}", values[2]])
        assert str(read(load_settings(args, {option.env: values[1]}))).lower() == values[2], option.key
    assert ServeSettings().http.port == 8480


def test_bad_settings_exit_2_naming_the_setting(tmp_path: Path) -> None:
    for args, words in (
        (["--port", "huge"], "--port: http.port: must be a whole number"),
        (["--engine", "dockerr"], "engine: must be podman, memory"),
        (["--engine", "ssh://root@192.0.2.1/run/podman/podman.sock"], "add it as a host (overhaul vm host create"),
        (["--rollout-retry-min", "-1"], "must not be negative"),
        (["--store", "mysql://db/fleet"], "store: must be a SQLite file's path or a postgresql:// URL"),
        (["--store", "postgresql://o@127.0.0.1:9/f"], "engine.engine: the private Podman service lives on this"),
        (
            ["--store", "postgresql://o@127.0.0.1:9/f", "--engine", "memory", "--lease-ttl", "5"],
            "lease.ttl: must be at least 3 times lease.renew_every (2), got 5",
        ),
        (
            ["--store", "postgresql://o@127.0.0.1:9/f", "--engine", "memory", "--port", "0"],
            "http.port: with a shared store",
        ),
    ):
        result = overhaul("serve", "--state-dir", str(tmp_path), *args)
        assert result.returncode == 2, result.stderr
        assert words in result.stderr and "Traceback" not in result.stderr


def test_the_cli_never_loads_the_server() -> None:
    code = (
        "import sys; from overhaul.cli import build_parser; build_parser(); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('aiohttp', 'aiodocker', 'sqlite3', 'prometheus_client') or m.startswith('overhaul.serve') "
        "or m.startswith('overhaul.runtime') or m.startswith('overhaul.adapters')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


def test_a_crashed_serve_leaves_the_state_directory_free(tmp_path: Path) -> None:
    with overhaul_serve(tmp_path / "state", "--engine", "memory") as running:
        running.process.kill()
        running.process.wait(10)
    with overhaul_serve(tmp_path / "state", "--engine", "memory") as again:
        assert again.call("GET", "/healthz", token="")[0] == 200
    assert os.path.exists(tmp_path / "state" / "serve.lock")


@pytest.mark.parametrize("version", ["2018-06-01", "latest", "2024-13", "x" * 100])
def test_api_versions_older_than_automatic_upgrades_or_malformed_get_400(served: Served, version: str) -> None:
    status, doc, _ = served.call("GET", f"{VMSS}?api-version={version}")
    assert status == 400 and doc["error"]["code"] == "InvalidApiVersionParameter", doc
    assert served.call("GET", f"{VMSS}?api-version=2026-04-01")[0] == 404  # any later version is served


def test_arm_document_details(served: Served) -> None:
    status, doc, _ = served.call(
        "PUT",
        f"{GALLERY}/versions/3.0.0?{API}",
        {"properties": {"storageProfile": {"source": {"overhaul": {"containerImage": "localhost/x:3"}}}}},
    )
    assert status == 201, doc  # created; the same PUT again is 200
    assert doc["id"] == f"{GALLERY}/versions/3.0.0"
    published = doc["properties"]["publishingProfile"]["publishedDate"]
    assert isinstance(published, str) and published.endswith("Z") and "T" in published
    assert (
        served.call(
            "PUT",
            f"{GALLERY}/versions/3.0.0?{API}",
            {"properties": {"storageProfile": {"source": {"overhaul": {"containerImage": "localhost/x:3"}}}}},
        )[0]
        == 200
    )
    assert served.call("DELETE", f"{GALLERY}/versions/3.0.0?{API}")[0] == 200
    assert served.call("DELETE", f"{GALLERY}/versions/3.0.0?{API}")[0] == 204
    assert served.call("DELETE", f"{VMSS}?{API}")[0] == 204


def test_a_wrong_engine_socket_is_found_at_start(tmp_path: Path) -> None:
    result = overhaul(
        "serve", "--state-dir", str(tmp_path), "--port", "0", "--engine", f"unix://{tmp_path}/no-such.sock"
    )
    assert result.returncode == 1
    assert f"no container engine answers at unix://{tmp_path}/no-such.sock" in result.stderr
    assert "Traceback" not in result.stderr


def test_ctrl_c_while_following_stops_only_the_cli(served: Served) -> None:
    slow = json.loads(json.dumps(API_MODEL))
    slow["properties"]["upgradePolicy"]["rollingUpgradePolicy"] = {"pauseTimeBetweenBatches": "PT1M"}
    assert served.call("PUT", f"{VMSS}?{API}", slow)[0] == 201
    publish(served, "1.5.0")
    env = {**os.environ, "OVERHAUL_ENDPOINT": served.url, "OVERHAUL_STATE_DIR": str(served.state_dir)}
    follower = subprocess.Popen(
        [sys.executable, "-m", "overhaul.cli", "vmss", "rolling-upgrade", "start", "--ids", VMSS],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while served.call("GET", f"{VMSS}/rollingUpgrades/latest?{API}")[0] != 200:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    time.sleep(1)  # it is following now
    follower.send_signal(signal.SIGINT)
    _, stderr = follower.communicate(timeout=30)
    assert follower.returncode == 130
    assert "interrupted" in stderr and "get-latest --wait" in stderr and "Traceback" not in stderr
    latest = served.call("GET", f"{VMSS}/rollingUpgrades/latest?{API}")[1]
    assert latest["properties"]["runningStatus"]["code"] == "RollingForward"  # it goes on
    assert served.call("POST", f"{VMSS}/rollingUpgrades/cancel?{API}")[0] == 202


def test_the_cli_says_where_the_token_is_looked_for(tmp_path: Path) -> None:
    env = {**os.environ, "OVERHAUL_STATE_DIR": str(tmp_path), "OVERHAUL_ENDPOINT": "http://127.0.0.1:9"}
    env.pop("OVERHAUL_TOKEN", None)
    result = overhaul("vmss", "list", env=env)
    assert result.returncode == 1
    assert str(tmp_path / "token") in result.stderr and "OVERHAUL_STATE_DIR" in result.stderr
    assert "token itself in OVERHAUL_TOKEN" in result.stderr
