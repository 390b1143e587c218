"""Logs a person can use: journald priorities, JSON lines, a line per attempt, batch, instance step and API write,
and the agent's verdict changes and extension runs, from the real programs."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import signal
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import pytest

from overhaul.core.rollout import StartedBy
from overhaul.localhost import free_port
from overhaul.serve import logs as serve_logs
from overhaul_agent import logs as agent_logs
from tests.builders import Runtime, small, version
from tests.conftest import FakeApp, agent_argv, fast_settings
from tests.serve import API, overhaul_serve

BOTH = pytest.mark.parametrize("logs", [agent_logs, serve_logs], ids=["agent", "orchestrator"])


def record(level: int, message: str, **fields: Any) -> logging.LogRecord:
    rec = logging.LogRecord("overhaul.test", level, __file__, 1, message, None, None)
    if fields:
        rec.fields = fields
    return rec


@BOTH
def test_journald_lines_carry_priorities_and_no_timestamp(logs: ModuleType) -> None:
    formatter = logs.LineFormatter(json_lines=False, journald=True)
    assert formatter.format(record(logging.WARNING, "disk full")) == "<4>WARNING overhaul.test: disk full"
    assert formatter.format(record(logging.ERROR, "a\nb")) == "<3>ERROR overhaul.test: a\n<3>b"
    assert formatter.format(record(logging.INFO, "x")).startswith("<6>")
    assert formatter.format(record(logging.DEBUG, "x")).startswith("<7>")
    plain = logs.LineFormatter(json_lines=False, journald=False).format(record(logging.INFO, "x"))
    assert plain[:4].isdigit() and plain.endswith("INFO overhaul.test: x")  # a timestamp first


@BOTH
def test_json_lines_carry_the_records_fields(logs: ModuleType) -> None:
    line = logs.LineFormatter(json_lines=True, journald=False).format(record(logging.INFO, "put", status=201))
    doc = json.loads(line)
    assert doc["level"] == "info" and doc["logger"] == "overhaul.test" and doc["message"] == "put"
    assert doc["status"] == 201 and doc["time"].endswith("+00:00")


@BOTH
def test_journald_is_recognised_by_the_stream_systemd_names(logs: ModuleType, tmp_path: Path) -> None:
    with (tmp_path / "stderr").open("w") as stream:
        st = os.fstat(stream.fileno())
        os.environ["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        try:
            assert logs.under_journald(stream)
            assert not logs.under_journald(io.StringIO())
            os.environ["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino + 1}"
            assert not logs.under_journald(stream)  # a child whose stderr was redirected elsewhere
        finally:
            del os.environ["JOURNAL_STREAM"]


async def test_a_rollout_logs_each_attempt_batch_and_instance_step(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    runtime = Runtime(tmp_path / "overhaul.db")
    await runtime.orchestrator.start()
    try:
        from overhaul.core.gallery import ImageDefinition  # noqa: PLC0415

        await runtime.orchestrator.galleries.put_definition(ImageDefinition("g", "tiny", "overhaul", "test", "tiny"))
        await runtime.orchestrator.galleries.publish(version("1.0.0"))
        await runtime.orchestrator.scale_sets.put("web", small(2))
        await runtime.orchestrator.galleries.publish(version("2.0.0"))
        runtime.driver.exiting_images.add("localhost/tiny:2.0.0")
        caplog.set_level(logging.INFO)
        attempt = await runtime.orchestrator.upgrades.start("web", started_by=StartedBy.PLATFORM)
        await runtime.orchestrator.upgrades.wait(attempt.id, 10)
    finally:
        await runtime.orchestrator.close()
        await runtime.store.close()
    messages = [r.getMessage() for r in caplog.records]
    wanted = [
        f"rolling upgrade {attempt.id} of web started by Platform",
        f"rolling upgrade {attempt.id} of web: batch 1 started: instance(s) 0",
        "web_0: reimage onto 2.0.0 started",
        "web_0: reimage finished in ",
        "web_0: rolling back to its previous OS disk: Unhealthy after the reimage: the instance is not running",
        "web_0: rollback started",
        "web_0: rollback finished in ",
        f"rolling upgrade {attempt.id} of web Faulted: 0 upgraded, 1 failed",
    ]
    found = [next((i for i, m in enumerate(messages) if m.startswith(w)), -1) for w in wanted]
    assert -1 not in found and found == sorted(found), "\n".join(messages)
    faulted = next(r for r in caplog.records if r.getMessage().startswith(wanted[-1]))
    assert faulted.levelno == logging.ERROR


def test_every_api_write_has_an_audit_line(tmp_path: Path) -> None:
    with overhaul_serve(tmp_path / "state", "--engine", "memory", "--log-format", "json") as served:
        gallery = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/galleries/g/images/i"
        body = {"properties": {"identifier": {"publisher": "p", "offer": "o", "sku": "s"}}}
        assert served.call("PUT", f"/subscriptions/s/resourcegroups/rg?{API}", {"location": "local"})[0] == 201
        assert served.call("PUT", f"{gallery}?{API}", body, make_group=False)[0] == 201
        assert served.call("GET", f"{gallery}?{API}")[0] == 200
        assert served.call("DELETE", f"{gallery}/versions/9.9.9?{API}")[0] in (204, 404)
    lines = [json.loads(line) for line in served.log.read_text().splitlines() if line.startswith("{")]
    audit = [d for d in lines if d["logger"] == "overhaul.audit"]
    assert [(d["method"], d["status"], d["caller"]) for d in audit][:2] == [("PUT", 201, "127.0.0.1")] * 2
    assert [d["resource"] for d in audit[:2]] == ["/subscriptions/s/resourcegroups/rg", gallery]
    assert all(d["method"] != "GET" for d in audit)  # reads are not audited
    assert len(audit) == 3


async def test_the_agent_logs_its_verdict_changes_and_extension_runs_for_journald(
    fake_app: FakeApp, tmp_path: Path
) -> None:
    health = {
        "name": "health",
        "properties": {"type": "ApplicationHealthLinux", "settings": fast_settings(fake_app.port)},
    }
    script = {
        "name": "setup",
        "properties": {
            "publisher": "Microsoft.Azure.Extensions",
            "type": "CustomScript",
            "settings": {"commandToExecute": "echo configured"},
        },
    }
    metadata = tmp_path / "metadata.json"
    metadata.write_text(json.dumps({"instanceId": "0", "extensionProfile": {"extensions": [health, script]}}))
    port = free_port()
    stderr_path = tmp_path / "stderr"
    with stderr_path.open("wb") as stderr:
        st = os.fstat(stderr.fileno())
        env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}  # as systemd sets it
        proc = await asyncio.create_subprocess_exec(
            *agent_argv(port, tmp_path / "state", "--metadata", str(metadata), "--log-format", "json"),
            env=env,
            stderr=stderr,
        )
    try:
        async with aiohttp.ClientSession() as session, asyncio.timeout(20):
            while True:
                try:
                    async with session.get(f"http://127.0.0.1:{port}/health") as resp:
                        if (await resp.json())["applicationHealthState"] == "Healthy":
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 10)
    lines = stderr_path.read_text().splitlines()
    assert all(line.startswith("<") for line in lines), lines  # journald priorities
    docs = [json.loads(line.split(">", 1)[1]) for line in lines]
    messages = [d["message"] for d in docs]
    assert any(m.startswith("extension setup: succeeded after ") for m in messages), messages
    assert any(m.startswith("health: Initializing -> Healthy: ") for m in messages), messages
    verdict = next(d for d in docs if d["message"].startswith("health: Initializing -> Healthy"))
    assert (verdict["from"], verdict["to"]) == ("Initializing", "Healthy")
