"""CustomScript extensions: order, failure reporting, once per OS disk."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from overhaul_agent.metadata import InstanceMetadata, parse_metadata
from tests.conftest import FakeApp, StartAgent, fast_settings


def script(name: str, command: str, after: list[str] | None = None, **settings: Any) -> dict[str, Any]:
    props: dict[str, Any] = {
        "publisher": "Microsoft.Azure.Extensions",
        "type": "CustomScript",
        "typeHandlerVersion": "2.1",
        "settings": {"commandToExecute": command, **settings},
    }
    if after:
        props["provisionAfterExtensions"] = after
    return {"name": name, "properties": props}


def metadata_with(port: int, *extensions: dict[str, Any]) -> InstanceMetadata:
    health = {
        "name": "health",
        "properties": {
            "publisher": "Microsoft.ManagedServices",
            "type": "ApplicationHealthLinux",
            "typeHandlerVersion": "2.0",
            "settings": fast_settings(port),
        },
    }
    doc = {
        "instanceId": "3",
        "scaleSet": "web",
        "imageReference": {"publisher": "overhaul", "offer": "demo", "sku": "base", "version": "1.0.0"},
        "extensionProfile": {"extensions": [health, *extensions]},
    }
    return parse_metadata(doc)


async def test_extensions_run_in_dependency_order_then_probing_starts(
    fake_app: FakeApp, start_agent: StartAgent, tmp_path: Path
) -> None:
    log = tmp_path / "order.log"
    metadata = metadata_with(
        fake_app.port,
        script("third", f"echo third >> {log}", after=["second"]),
        script("second", f"sleep 0.3; echo second >> {log}", after=["first"]),
        script("first", f"echo first >> {log}"),
    )
    agent = await start_agent(None, metadata=metadata)
    _, doc, _ = await agent.health()
    assert doc["applicationHealthState"] == "Initializing"
    assert doc["reason"].startswith("extension ")
    doc = await agent.wait_state("Healthy")
    assert log.read_text().split() == ["first", "second", "third"]
    states = {e["name"]: e["provisioningState"] for e in doc["extensions"]}
    assert states == {
        "health": "Succeeded",
        "first": "Succeeded",
        "second": "Succeeded",
        "third": "Succeeded",
    }
    assert doc["instanceId"] == "3"
    assert doc["imageReference"]["version"] == "1.0.0"


async def test_failing_script_makes_the_instance_unhealthy(fake_app: FakeApp, start_agent: StartAgent) -> None:
    metadata = metadata_with(
        fake_app.port,
        script("setup", "echo installing; echo 'disk full: cannot write /opt/app' >&2; exit 7"),
        script("after-setup", "true", after=["setup"]),
    )
    agent = await start_agent(None, metadata=metadata)
    doc = await agent.wait_state("Unhealthy")
    assert "extension setup failed with exit code 7" in doc["reason"]
    assert "disk full: cannot write /opt/app" in doc["reason"]
    setup = next(e for e in doc["extensions"] if e["name"] == "setup")
    assert setup["exitCode"] == 7
    assert setup["stdoutTail"] == "installing\n"
    assert "disk full" in setup["stderrTail"]
    blocked = next(e for e in doc["extensions"] if e["name"] == "after-setup")
    assert blocked["provisioningState"] == "Failed"
    assert "not run" in blocked["message"]
    status, _, _ = await agent.health()
    assert status == 503


async def test_script_timeout_fails_the_extension(fake_app: FakeApp, start_agent: StartAgent) -> None:
    metadata = metadata_with(fake_app.port, script("slow", "sleep 30", overhaul={"timeoutInSeconds": 0.3}))
    agent = await start_agent(None, metadata=metadata)
    doc = await agent.wait_state("Unhealthy")
    assert "timed out after 0.3s" in doc["reason"]


async def test_succeeded_extensions_run_once_per_os_disk(
    fake_app: FakeApp, start_agent: StartAgent, tmp_path: Path
) -> None:
    counter = tmp_path / "runs"
    metadata = metadata_with(fake_app.port, script("count", f"echo run >> {counter}"))
    disk1 = tmp_path / "disk1"
    first = await start_agent(None, metadata=metadata, state_dir=disk1)
    await first.wait_state("Healthy")
    first.agent.stop.set()
    assert await first.task == 0
    restarted = await start_agent(None, metadata=metadata, state_dir=disk1)
    doc = await restarted.wait_state("Healthy")
    assert counter.read_text().count("run") == 1  # restart: not run again
    assert next(e for e in doc["extensions"] if e["name"] == "count")["provisioningState"] == "Succeeded"
    reimaged = await start_agent(None, metadata=metadata, state_dir=tmp_path / "disk2")
    await reimaged.wait_state("Healthy")
    assert counter.read_text().count("run") == 2  # new OS disk: run again


async def test_changed_command_runs_again(fake_app: FakeApp, start_agent: StartAgent, tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    disk = tmp_path / "disk"
    one = await start_agent(
        None, metadata=metadata_with(fake_app.port, script("s", f"echo a >> {counter}")), state_dir=disk
    )
    await one.wait_state("Healthy")
    one.agent.stop.set()
    await one.task
    two = await start_agent(
        None, metadata=metadata_with(fake_app.port, script("s", f"echo b >> {counter}")), state_dir=disk
    )
    await two.wait_state("Healthy")
    assert counter.read_text().split() == ["a", "b"]


async def test_extension_files_are_private(fake_app: FakeApp, start_agent: StartAgent, tmp_path: Path) -> None:
    """Status, stdout and stderr of an extension run may hold protected settings: owner only, even under umask 0."""
    old = os.umask(0)
    try:
        metadata = metadata_with(fake_app.port, script("secret", "echo s3cret; echo s3cret >&2"))
        running = await start_agent(None, metadata=metadata, state_dir=tmp_path / "disk")
        await running.wait_state("Healthy")
    finally:
        os.umask(old)
    root = tmp_path / "disk" / "extensions"
    for path in (root, root / "secret"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    for name in ("status.json", "stdout", "stderr"):
        assert stat.S_IMODE((root / "secret" / name).stat().st_mode) == 0o600, name
