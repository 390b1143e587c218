"""Parsing of probe answers: table of cases plus properties over arbitrary input."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from overhaul_agent.probe_body import CustomMetrics, HealthState, parse_custom_metrics, parse_http_answer

H, U, K = HealthState.HEALTHY, HealthState.UNHEALTHY, HealthState.UNKNOWN


@pytest.mark.parametrize(
    ("status", "body", "state"),
    [
        (200, b'{"applicationHealthState": "Healthy"}', H),
        (200, b'{"applicationHealthState": "Unhealthy"}', U),
        (204, b'{"ApplicationHealthState": "Healthy"}', H),
        (200, b'{"APPLICATIONHEALTHSTATE": "healthy"}', H),
        (200, b'{"applicationHealthState": "Initializing"}', K),
        (200, b'{"applicationHealthState": "Busy"}', K),
        (200, b'{"applicationHealthState": 1}', K),
        (200, b'{"applicationHealthState": null}', K),
        (200, b'{"state": "Healthy"}', K),
        (200, b"", K),
        (200, b"OK", K),
        (200, b'["Healthy"]', K),
        (200, b"\xff\xfe", K),
        (500, b'{"applicationHealthState": "Healthy"}', K),
        (301, b'{"applicationHealthState": "Healthy"}', K),
        (404, b"", K),
    ],
)
def test_answers(status: int, body: bytes, state: HealthState) -> None:
    assert parse_http_answer(status, body).state is state


def test_truncated_body_is_unknown() -> None:
    verdict = parse_http_answer(200, b'{"applicationHealthState": "Healthy"}', truncated=True)
    assert verdict.state is K
    assert "larger than" in verdict.detail


def test_custom_metrics_parsed() -> None:
    metrics = json.dumps({"rollingUpgrade": {"PhaseOrderingNumber": 2, "SkipUpgrade": True}})
    body = json.dumps({"applicationHealthState": "Healthy", "customMetrics": metrics}).encode()
    verdict = parse_http_answer(200, body)
    assert verdict.state is H
    assert verdict.custom_metrics == CustomMetrics(phase_ordering_number=2, skip_upgrade=True)
    assert verdict.custom_metrics_error is None


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        ({"rollingUpgrade": {}}, "must be a string"),
        ("not json", "not valid JSON"),
        ("[1]", "JSON object"),
        ('{"rollingUpgrade": 3}', "rollingUpgrade must be an object"),
        ('{"rollingUpgrade": {"PhaseOrderingNumber": "1"}}', "PhaseOrderingNumber"),
        ('{"rollingUpgrade": {"PhaseOrderingNumber": -1}}', "PhaseOrderingNumber"),
        ('{"rollingUpgrade": {"PhaseOrderingNumber": true}}', "PhaseOrderingNumber"),
        ('{"rollingUpgrade": {"SkipUpgrade": "yes"}}', "SkipUpgrade"),
    ],
)
def test_invalid_custom_metrics_reported_not_fatal(raw: object, error: str) -> None:
    body = json.dumps({"applicationHealthState": "Healthy", "customMetrics": raw}).encode()
    verdict = parse_http_answer(200, body)
    assert verdict.state is H  # the state still counts
    assert verdict.custom_metrics is None
    assert verdict.custom_metrics_error is not None and error in verdict.custom_metrics_error


def test_empty_custom_metrics_means_no_phase_no_skip() -> None:
    assert parse_custom_metrics("{}") == (CustomMetrics(None, False), None)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)


@given(st.integers(min_value=0, max_value=999), st.binary(max_size=2048), st.booleans())
def test_any_bytes_map_to_exactly_one_probe_state(status: int, body: bytes, truncated: bool) -> None:
    verdict = parse_http_answer(status, body, truncated=truncated)
    assert verdict.state in (H, U, K)
    if verdict.state is not K:
        assert 200 <= status < 300 and not truncated


@given(json_values, json_values)
def test_any_json_document_maps_to_one_state(state: object, metrics: object) -> None:
    body = json.dumps({"applicationHealthState": state, "customMetrics": metrics}).encode()
    verdict = parse_http_answer(200, body)
    expected = {"healthy": H, "unhealthy": U}.get(state.lower(), K) if isinstance(state, str) else K
    assert verdict.state is expected
    if verdict.state is not K:
        assert (verdict.custom_metrics is None) != (verdict.custom_metrics_error is None)


@given(st.text(max_size=300) | json_values.map(json.dumps))
def test_custom_metrics_never_raise(raw: str) -> None:
    metrics, error = parse_custom_metrics(raw)
    assert (metrics is None) != (error is None)


def test_deeply_nested_json_does_not_raise() -> None:
    body = b"[" * 100_000 + b"]" * 100_000
    assert parse_http_answer(200, body).state is K
    assert parse_custom_metrics("[" * 100_000)[1] is not None
