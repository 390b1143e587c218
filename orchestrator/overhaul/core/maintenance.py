"""Maintenance windows in the shape of Azure's maintenance configurations (pure).

``Microsoft.Maintenance/maintenanceConfigurations`` with ``maintenanceScope: OSImage`` and a ``maintenanceWindow``
({startDateTime, duration, timeZone, recurEvery, expirationDateTime}), assigned to a scale set by a
``configurationAssignment``. Automatic OS upgrades start only inside an assigned window; at its end the running batch
finishes and the attempt waits for the next one. Azure's rules for OSImage hold: the window lasts at least 5 hours
and recurs every day; time zones are Windows' names, as Azure takes them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from overhaul.core.arm_json import ModelError, resource_envelope

# Azure's minimum for OSImage maintenance windows; `overhaul serve --maintenance-min-window` lowers it for labs.
MIN_OS_IMAGE_WINDOW = 5 * 3600.0
SCOPES = ("Host", "OSImage", "Extension", "InGuestPatch", "SQLDB", "SQLManagedInstance")
DATE_TIME = "%Y-%m-%d %H:%M"

# Windows time zone names (what Azure's maintenanceWindow.timeZone takes) and their IANA zones (CLDR's mapping).
WINDOWS_ZONES: Mapping[str, str] = {
    "UTC": "UTC",
    "Coordinated Universal Time": "UTC",
    "GMT Standard Time": "Europe/London",
    "Greenwich Standard Time": "Atlantic/Reykjavik",
    "W. Europe Standard Time": "Europe/Berlin",
    "Central Europe Standard Time": "Europe/Budapest",
    "Central European Standard Time": "Europe/Warsaw",
    "Romance Standard Time": "Europe/Paris",
    "E. Europe Standard Time": "Europe/Chisinau",
    "FLE Standard Time": "Europe/Kiev",
    "GTB Standard Time": "Europe/Bucharest",
    "Russian Standard Time": "Europe/Moscow",
    "Turkey Standard Time": "Europe/Istanbul",
    "Israel Standard Time": "Asia/Jerusalem",
    "Arabian Standard Time": "Asia/Dubai",
    "India Standard Time": "Asia/Calcutta",
    "China Standard Time": "Asia/Shanghai",
    "Singapore Standard Time": "Asia/Singapore",
    "Tokyo Standard Time": "Asia/Tokyo",
    "Korea Standard Time": "Asia/Seoul",
    "AUS Eastern Standard Time": "Australia/Sydney",
    "Cen. Australia Standard Time": "Australia/Adelaide",
    "New Zealand Standard Time": "Pacific/Auckland",
    "Hawaiian Standard Time": "Pacific/Honolulu",
    "Alaskan Standard Time": "America/Anchorage",
    "Pacific Standard Time": "America/Los_Angeles",
    "Mountain Standard Time": "America/Denver",
    "Central Standard Time": "America/Chicago",
    "Eastern Standard Time": "America/New_York",
    "Atlantic Standard Time": "America/Halifax",
    "E. South America Standard Time": "America/Sao_Paulo",
    "SA Pacific Standard Time": "America/Bogota",
    "South Africa Standard Time": "Africa/Johannesburg",
}


def maintenance_configuration_id(subscription: str, resource_group: str, name: str) -> str:
    group = f"/subscriptions/{subscription}/resourceGroups/{resource_group}"
    return f"{group}/providers/Microsoft.Maintenance/maintenanceConfigurations/{name}"


@dataclass(frozen=True)
class MaintenanceWindow:
    """Opens every day at ``start``'s time of day in ``time_zone`` (from ``start`` on), for ``duration``."""

    start: datetime  # local to time_zone, naive
    duration: float  # seconds
    time_zone: str  # Windows' name
    recur_every: str = "Day"
    expiration: datetime | None = None  # local, naive

    def _zone(self) -> ZoneInfo:
        return ZoneInfo(WINDOWS_ZONES[self.time_zone])

    def around(self, now: float) -> tuple[float, float] | None:
        """The occurrence open at ``now`` or, if none is, the next one: (opens, closes), seconds since the epoch;
        None when none is left (the configuration expired)."""
        zone = self._zone()
        local = datetime.fromtimestamp(now, zone).replace(tzinfo=None)
        day = max(local.date() - timedelta(days=1), self.start.date())
        for _ in range(3):
            opens_local = datetime.combine(day, self.start.time())
            if self.expiration is not None and opens_local >= self.expiration:
                return None
            opens = opens_local.replace(tzinfo=zone).timestamp()
            if now < opens + self.duration:
                return opens, opens + self.duration
            day += timedelta(days=1)
        return None

    def is_open(self, now: float) -> bool:
        occurrence = self.around(now)
        return occurrence is not None and occurrence[0] <= now

    def to_json(self) -> dict[str, Any]:
        hours, rest = divmod(int(self.duration), 3600)
        doc: dict[str, Any] = {
            "startDateTime": self.start.strftime(DATE_TIME),
            "duration": f"{hours:02d}:{rest // 60:02d}",
            "timeZone": self.time_zone,
            "recurEvery": self.recur_every,
        }
        if self.expiration is not None:
            doc["expirationDateTime"] = self.expiration.strftime(DATE_TIME)
        return doc


@dataclass(frozen=True)
class MaintenanceConfiguration:
    name: str
    resource_group: str
    subscription: str
    location: str
    scope: str
    window: MaintenanceWindow | None
    sent: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def id(self) -> str:
        return maintenance_configuration_id(self.subscription, self.resource_group, self.name)

    def to_json(self) -> dict[str, Any]:
        props = dict(self.sent.get("properties") or {})
        props.update({"namespace": "Microsoft.Maintenance", "maintenanceScope": self.scope})
        props.setdefault("visibility", "Custom")
        props.setdefault("extensionProperties", {})
        if self.window is not None:
            props["maintenanceWindow"] = self.window.to_json()
        return {
            **{k: v for k, v in self.sent.items() if k not in ("properties", "id", "name", "type")},
            "id": self.id,
            "name": self.name,
            "type": "Microsoft.Maintenance/maintenanceConfigurations",
            "location": self.location,
            "properties": props,
        }


def _date_time(value: Any, path: str) -> datetime:
    if not isinstance(value, str):
        raise ModelError(path, f"must be a date and time as 'yyyy-MM-dd hh:mm', got {value!r}")
    try:
        return datetime.strptime(value.strip(), DATE_TIME)
    except ValueError:
        raise ModelError(path, f"must be a date and time as 'yyyy-MM-dd hh:mm', got {value!r}") from None


def _duration(value: Any, path: str) -> float:
    """Azure's 'hh:mm'."""
    text = value if isinstance(value, str) else ""
    hours, _, minutes = text.partition(":")
    if not (hours.isdigit() and minutes.isdigit() and len(minutes) == 2 and int(minutes) < 60):
        raise ModelError(path, f"must be a duration as 'hh:mm', got {value!r}")
    return int(hours) * 3600.0 + int(minutes) * 60.0


def parse_window(doc: Any, path: str, min_duration: float) -> MaintenanceWindow:
    if not isinstance(doc, Mapping):
        raise ModelError(path, "must be a JSON object")
    start = _date_time(doc.get("startDateTime"), f"{path}.startDateTime")
    zone = doc.get("timeZone", "UTC")
    if zone not in WINDOWS_ZONES:
        known = ", ".join(sorted(WINDOWS_ZONES)[:6])
        raise ModelError(
            f"{path}.timeZone", f"must be a Windows time zone name as Azure takes (e.g. {known}), got {zone!r}"
        )
    duration = _duration(doc.get("duration"), f"{path}.duration")
    if duration < min_duration:
        raise ModelError(
            f"{path}.duration",
            f"must be at least {min_duration / 3600:g} hours for maintenanceScope OSImage (Azure's minimum), got "
            f"{doc.get('duration')!r}",
        )
    if duration > 24 * 3600:
        raise ModelError(f"{path}.duration", f"must be at most 24:00 for a daily window, got {doc.get('duration')!r}")
    recur = doc.get("recurEvery", "Day")
    if recur not in ("Day", "1Day"):
        raise ModelError(
            f"{path}.recurEvery", f"must be 'Day' for maintenanceScope OSImage (Azure's rule), got {recur!r}"
        )
    expiration = None
    if doc.get("expirationDateTime") not in (None, ""):
        expiration = _date_time(doc.get("expirationDateTime"), f"{path}.expirationDateTime")
        if expiration <= start:
            raise ModelError(f"{path}.expirationDateTime", "must be after startDateTime: the window would never open")
    return MaintenanceWindow(start, duration, zone, "Day", expiration)


def parse_maintenance_configuration(
    doc: Any, *, name: str, resource_group: str, subscription: str, min_duration: float = MIN_OS_IMAGE_WINDOW
) -> MaintenanceConfiguration:
    """The body of a maintenance configuration PUT; errors name the field."""
    doc, location, props = resource_envelope(doc, name)
    scope = props.get("maintenanceScope")
    if scope not in SCOPES:
        raise ModelError("properties.maintenanceScope", f"must be one of {', '.join(SCOPES)}, got {scope!r}")
    if scope != "OSImage":
        raise ModelError("properties.maintenanceScope", f"overhaul carries out OSImage maintenance only, got {scope!r}")
    raw = props.get("maintenanceWindow")
    window = None if raw is None else parse_window(raw, "properties.maintenanceWindow", min_duration)
    return MaintenanceConfiguration(name, resource_group, subscription, location, scope, window, dict(doc))


@dataclass(frozen=True)
class ConfigurationAssignment:
    """``…/virtualMachineScaleSets/{scale_set}/providers/Microsoft.Maintenance/configurationAssignments/{name}``."""

    name: str
    scale_set: str
    resource_group: str
    subscription: str
    location: str
    configuration_id: str

    @property
    def resource_id(self) -> str:
        group = f"/subscriptions/{self.subscription}/resourceGroups/{self.resource_group}"
        return f"{group}/providers/Microsoft.Compute/virtualMachineScaleSets/{self.scale_set}"

    @property
    def id(self) -> str:
        return f"{self.resource_id}/providers/Microsoft.Maintenance/configurationAssignments/{self.name}"

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "type": "Microsoft.Maintenance/configurationAssignments",
            "location": self.location,
            "properties": {"maintenanceConfigurationId": self.configuration_id, "resourceId": self.resource_id},
        }


def parse_assignment(
    doc: Any, *, name: str, scale_set: str, resource_group: str, subscription: str
) -> ConfigurationAssignment:
    """The body of a configuration assignment PUT; errors name the field."""
    doc, location, props = resource_envelope(doc, name)
    config_id = props.get("maintenanceConfigurationId")
    if not isinstance(config_id, str) or "/providers/microsoft.maintenance/maintenanceconfigurations/" not in (
        config_id.lower()
    ):
        raise ModelError(
            "properties.maintenanceConfigurationId",
            f"must be a maintenance configuration's resource id, got {config_id!r}",
        )
    return ConfigurationAssignment(name, scale_set, resource_group, subscription, location, config_id)
