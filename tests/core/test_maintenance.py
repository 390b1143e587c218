"""Maintenance configurations as Azure takes them (OSImage: at least 5 hours, every day, Windows time zones), the
window's openings, and an attempt that waits for its window between batches."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from overhaul.core.arm_json import ModelError
from overhaul.core.maintenance import parse_assignment, parse_maintenance_configuration
from overhaul.core.model import RollingUpgradePolicy
from overhaul.core.planner import Health, InstanceView
from overhaul.core.rollout import (
    ActionResult,
    AttemptStatus,
    apply_result,
    attempt_from_json,
    attempt_to_json,
    decide,
)
from overhaul.core.why import Context, attempt_causes
from tests.builders import platform_attempt


def body(**window: Any) -> dict[str, Any]:
    base = {"startDateTime": "2026-12-01 22:00", "duration": "05:00", "timeZone": "UTC", "recurEvery": "Day"}
    return {"location": "local", "properties": {"maintenanceScope": "OSImage", "maintenanceWindow": {**base, **window}}}


def parse(doc: dict[str, Any], min_duration: float = 5 * 3600) -> Any:
    return parse_maintenance_configuration(
        doc, name="nightly", resource_group="rg", subscription="s", min_duration=min_duration
    )


def at(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("window", "field", "words"),
    [
        ({"duration": "04:59"}, "duration", "at least 5 hours"),
        ({"duration": "5h"}, "duration", "'hh:mm'"),
        ({"recurEvery": "Week Saturday"}, "recurEvery", "must be 'Day'"),
        ({"timeZone": "Mars/Olympus"}, "timeZone", "Windows time zone name"),
        ({"startDateTime": "tomorrow"}, "startDateTime", "yyyy-MM-dd hh:mm"),
        ({"expirationDateTime": "2026-11-30 00:00"}, "expirationDateTime", "never open"),
    ],
)
def test_a_window_azure_would_refuse_is_refused_naming_the_field(
    window: dict[str, Any], field: str, words: str
) -> None:
    with pytest.raises(ModelError, match=words) as refused:
        parse(body(**window))
    assert refused.value.path == f"properties.maintenanceWindow.{field}"


def test_only_os_image_maintenance_is_carried_out() -> None:
    doc = body()
    doc["properties"]["maintenanceScope"] = "Host"
    with pytest.raises(ModelError, match="OSImage maintenance only") as refused:
        parse(doc)
    assert refused.value.path == "properties.maintenanceScope"
    doc["properties"]["maintenanceScope"] = "Weekly"
    with pytest.raises(ModelError, match="must be one of"):
        parse(doc)


def test_a_lab_may_allow_shorter_windows_and_the_document_round_trips() -> None:
    configuration = parse(body(duration="00:02"), min_duration=60)
    assert configuration.window is not None and configuration.window.duration == 120
    doc = configuration.to_json()
    assert doc["type"] == "Microsoft.Maintenance/maintenanceConfigurations"
    assert doc["properties"]["maintenanceWindow"]["duration"] == "00:02"
    assert doc["id"].endswith("/providers/Microsoft.Maintenance/maintenanceConfigurations/nightly")


def test_a_daily_window_opens_and_closes_at_its_local_times() -> None:
    window = parse(body()).window
    assert window is not None
    assert not window.is_open(at("2026-11-30 23:00"))  # before its first day
    assert window.around(at("2026-11-30 23:00")) == (at("2026-12-01 22:00"), at("2026-12-02 03:00"))
    assert window.is_open(at("2026-12-02 02:59"))  # across midnight
    assert not window.is_open(at("2026-12-02 03:00"))
    assert window.around(at("2026-12-02 12:00")) == (at("2026-12-02 22:00"), at("2026-12-03 03:00"))
    pacific = parse(body(timeZone="Pacific Standard Time", startDateTime="2026-07-01 01:00")).window
    assert pacific is not None and pacific.is_open(at("2026-07-01 08:30"))  # 01:30 PDT is 08:30 UTC
    assert pacific.is_open(at("2026-12-01 09:30")) and not pacific.is_open(at("2026-12-01 08:30"))  # PST: UTC-8


def test_an_expired_configuration_has_no_next_window() -> None:
    window = parse(body(expirationDateTime="2026-12-03 00:00")).window
    assert window is not None and window.around(at("2026-12-03 12:00")) is None


def test_an_assignment_names_a_maintenance_configuration() -> None:
    with pytest.raises(ModelError) as refused:
        parse_assignment(
            {"properties": {"maintenanceConfigurationId": "nightly"}},
            name="a",
            scale_set="web",
            resource_group="rg",
            subscription="s",
        )
    assert refused.value.path == "properties.maintenanceConfigurationId"


def test_an_attempt_waits_for_its_window_between_batches_and_resumes_where_it_stopped() -> None:
    window = parse(body(duration="00:10"), min_duration=60).window  # 22:00-22:10 UTC daily
    now = at("2026-12-01 22:00")
    views = {i: InstanceView(i, "1.0.0", Health.HEALTHY, observed_at=now) for i in range(2)}
    policy = RollingUpgradePolicy(max_batch_instance_percent=50, pause_time_between_batches=600)
    attempt = platform_attempt(views, policy, now, window=window)
    decision = decide(attempt, views, now)
    assert decision.attempt.batch == (0,)
    attempt = apply_result(decision.attempt, ActionResult(decision.actions[0], ok=True), now)
    views[0] = InstanceView(0, "2.0.0", Health.HEALTHY, observed_at=now + 1)
    decision = decide(attempt, views, now + 1)  # committed; the pause (10 minutes) outlasts the window
    attempt = decision.attempt
    for action in decision.actions:
        attempt = apply_result(attempt, ActionResult(action, ok=True), now + 1)
    after_pause = now + 601
    decision = decide(attempt, views, after_pause)
    assert not decision.actions and decision.attempt.batch == ()
    assert decision.wake_at == at("2026-12-02 22:00")  # the next opening
    [cause] = attempt_causes(decision.attempt, views, after_pause, Context("-g rg -n web"))
    assert cause.code == "OutsideMaintenanceWindow" and cause.next_at == at("2026-12-02 22:00")
    restored = attempt_from_json(attempt_to_json(decision.attempt))  # across a restart
    assert restored.window == window
    decision = decide(restored, views, at("2026-12-02 22:00"))
    assert decision.attempt.batch == (1,) and decision.attempt.status is AttemptStatus.ROLLING_FORWARD
