"""Application Health settings: Azure's validation rules, each error naming its field."""

from __future__ import annotations

from typing import Any

import pytest

from overhaul_agent.settings import Protocol, SettingsError, parse_settings

HTTP = {"protocol": "http", "port": 8080, "requestPath": "/health"}


def test_defaults_follow_azure() -> None:
    s = parse_settings({"protocol": "https", "requestPath": "health"})
    assert s.protocol is Protocol.HTTPS
    assert s.port == 443
    assert s.request_path == "/health"
    assert s.interval == 5
    assert s.number_of_probes == 1
    assert s.grace_period == 5  # interval x numberOfProbes
    assert s.verify_tls is False
    assert s.probe_timeout < s.interval


def test_grace_period_defaults_to_interval_times_probes() -> None:
    s = parse_settings({**HTTP, "intervalInSeconds": 10, "numberOfProbes": 3})
    assert s.grace_period == 30


def test_tcp_needs_port_and_no_path() -> None:
    s = parse_settings({"protocol": "TCP", "port": 22})
    assert s.protocol is Protocol.TCP
    assert s.fallback_is_unhealthy


@pytest.mark.parametrize(
    ("doc", "field", "text"),
    [
        ({}, "settings.protocol", "required"),
        ({"protocol": "udp", "port": 1}, "settings.protocol", "tcp, http or https"),
        ({"protocol": 7}, "settings.protocol", "tcp, http or https"),
        ({"protocol": "tcp"}, "settings.port", "required when protocol is tcp"),
        ({"protocol": "tcp", "port": 80, "requestPath": "/"}, "settings.requestPath", "must not be set"),
        ({"protocol": "http", "port": 80}, "settings.requestPath", "required when protocol is http"),
        ({**HTTP, "port": 0}, "settings.port", "1..65535"),
        ({**HTTP, "port": 70000}, "settings.port", "1..65535"),
        ({**HTTP, "port": "80"}, "settings.port", "must be a number"),
        ({**HTTP, "port": True}, "settings.port", "must be a number"),
        ({**HTTP, "requestPath": 5}, "settings.requestPath", "string"),
        ({**HTTP, "intervalInSeconds": 4}, "settings.intervalInSeconds", "fastProbes"),
        ({**HTTP, "intervalInSeconds": 61}, "settings.intervalInSeconds", "5..60"),
        ({**HTTP, "intervalInSeconds": 5.5}, "settings.intervalInSeconds", "whole number"),
        ({**HTTP, "numberOfProbes": 0}, "settings.numberOfProbes", "1..24"),
        ({**HTTP, "numberOfProbes": 25}, "settings.numberOfProbes", "1..24"),
        ({**HTTP, "intervalInSeconds": 60, "numberOfProbes": 5}, "settings.numberOfProbes", "at most 240"),
        ({**HTTP, "gracePeriod": 14401}, "settings.gracePeriod", "5..14400"),
        ({**HTTP, "gracePeriod": 1}, "settings.gracePeriod", "5..14400"),
        ({**HTTP, "gracePeriod": float("nan")}, "settings.gracePeriod", "finite"),
        ({**HTTP, "probeTimeout": 3}, "settings.probeTimeout", "unknown setting"),
        ({**HTTP, "overhaul": {"retries": 3}}, "settings.overhaul.retries", "unknown setting"),
        ({**HTTP, "overhaul": []}, "settings.overhaul", "JSON object"),
        ({**HTTP, "overhaul": {"verifyTls": "yes"}}, "settings.overhaul.verifyTls", "true or false"),
        (
            {**HTTP, "overhaul": {"probeTimeoutInSeconds": 5}},
            "settings.overhaul.probeTimeoutInSeconds",
            "below",
        ),
        (
            {**HTTP, "overhaul": {"fastProbes": True}, "intervalInSeconds": 0.01},
            "settings.intervalInSeconds",
            "",
        ),
        ({**HTTP, "overhaul": {"host": ""}}, "settings.overhaul.host", "must be a host name or an IP address"),
    ],
)
def test_invalid_settings_name_the_field(doc: dict[str, Any], field: str, text: str) -> None:
    with pytest.raises(SettingsError) as err:
        parse_settings(doc)
    assert err.value.field == field
    assert text in str(err.value)
    assert str(err.value).startswith(field + ":")


def test_not_an_object() -> None:
    with pytest.raises(SettingsError, match="settings: must be a JSON object"):
        parse_settings([1, 2])


def test_fast_probes_is_an_explicit_choice() -> None:
    s = parse_settings({**HTTP, "intervalInSeconds": 0.2, "gracePeriod": 1.5, "overhaul": {"fastProbes": True}})
    assert s.interval == 0.2
    assert s.grace_period == 1.5
    assert s.probe_timeout == pytest.approx(0.16)


def test_extras_round_trip_through_json() -> None:
    doc = {**HTTP, "overhaul": {"verifyTls": True, "caFile": "/ca.pem", "probeTimeoutInSeconds": 2}}
    s = parse_settings(doc)
    assert parse_settings(s.to_json()) == s
