"""`overhaul serve`'s settings: nested frozen sections with defaults, then a JSON config file, then OVERHAUL_*
environment variables, then flags. Every field of every section is reachable from all three."""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from overhaul.adapters.health.monitor import HealthSettings
from overhaul.adapters.webhook import DeliverySettings
from overhaul.core.auto_upgrade import AutoUpgradeSettings
from overhaul.defaults import DEFAULT_PORT, default_state_dir
from overhaul.ports.store import HistoryRetention
from overhaul.runtime.settings import RuntimeSettings

ENGINE_KINDS = ("podman", "memory")
SHARED_STORE_SCHEMES = ("postgresql://", "postgres://")


class SettingsError(Exception):
    """A setting is wrong; the message names it and where it came from."""


@dataclass(frozen=True)
class HttpSettings:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    body_timeout: float = 30.0
    max_body_bytes: int = 1024 * 1024
    max_connections: int = 1000
    header_timeout: float = 10.0
    advertise_url: str = ""
    tls: str = "off"
    tls_cert: str = ""
    tls_key: str = ""
    trusted_proxies: str = ""
    managed_identity: bool = True

    @property
    def secure(self) -> bool:
        return self.tls == "auto" or bool(self.tls_cert)

    @property
    def url(self) -> str:
        """Where this API is reached on the address it listens on."""
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        host = f"[{host}]" if ":" in host else host
        return f"{'https' if self.secure else 'http'}://{host}:{self.port}"

    @property
    def proxies(self) -> frozenset[str]:
        return frozenset(filter(None, (p.strip() for p in self.trusted_proxies.split(","))))


@dataclass(frozen=True)
class EngineSection:
    # What --engine / OVERHAUL_ENGINE / {"engine": {"engine": ...}} says: podman, memory, or an engine's URL.
    engine: str = "podman"
    runtime: str = "runc"
    ulimits: str = "nofile=20000:20000,nproc=1000:1000"
    call_timeout: float = 60.0
    docker_systemd: bool = False
    publish_address: str = "127.0.0.1"
    service_restart_min: float = 0.2
    service_restart_max: float = 10.0

    @property
    def kind(self) -> str:
        """Which driver factory serves (serve.DRIVERS): podman (a private service), memory, or url (an engine)."""
        return self.engine if self.engine in ENGINE_KINDS else "url"

    @property
    def url(self) -> str | None:
        """The engine's URL when one was given."""
        return self.engine if self.kind == "url" else None


@dataclass(frozen=True)
class LeaseSection:
    """The shared store's lease (adapters/lease_postgresql.py)."""

    ttl: float = 10.0
    renew_every: float = 2.0
    max_skew: float = 1.0


@dataclass(frozen=True)
class ServeSettings:
    state_dir: str = ""
    store: str = ""
    log_level: str = "info"
    log_format: str = "text"
    shutdown_timeout: float = 10.0
    http: HttpSettings = field(default_factory=HttpSettings)
    engine: EngineSection = field(default_factory=EngineSection)
    health: HealthSettings = field(default_factory=HealthSettings)
    rollout: RuntimeSettings = field(default_factory=RuntimeSettings)
    history: HistoryRetention = field(default_factory=HistoryRetention)
    auto_upgrade: AutoUpgradeSettings = field(default_factory=AutoUpgradeSettings)
    events: DeliverySettings = field(default_factory=DeliverySettings)
    lease: LeaseSection = field(default_factory=LeaseSection)

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir) if self.state_dir else default_state_dir()

    @property
    def shared_store(self) -> bool:
        """Whether the store is PostgreSQL's, shared by several orchestrators (else SQLite's, this one's own)."""
        return self.store.startswith(SHARED_STORE_SCHEMES)

    @property
    def database(self) -> Path:
        """The SQLite file (relative paths are the state directory's)."""
        return self.state_path / (self.store or "overhaul.db")


# Section -> flag prefix; "" puts the section's fields at the top (--port, not --http-port).
SECTIONS = {
    "": "",
    "http": "",
    "engine": "engine",
    "health": "health",
    "rollout": "rollout",
    "history": "history",
    "auto_upgrade": "auto-upgrade",
    "events": "events",
    "lease": "lease",
}
# Flags that read better without their section's prefix.
FLAG_OVERRIDES = {
    ("engine", "engine"): "engine",
    ("engine", "runtime"): "runtime",
    ("health", "probe_interval"): "probe-interval",
}
HELP = {
    "state_dir": "database, token, lock and config drives (default /var/lib/overhaul as root)",
    "store": "the store: a SQLite file (default overhaul.db in the state directory), or postgresql://USER@HOST/DB "
    "shared by several orchestrators (its password is better in PGPASSWORD or ~/.pgpass than in the URL)",
    "lease.ttl": "seconds the shared store's lease lasts unless renewed (a standby takes over after it)",
    "lease.renew_every": "seconds between renewals of the shared store's lease (ttl must be at least 3 times this)",
    "lease.max_skew": "seconds this machine's clock may differ from the shared database's and still lead",
    "log_level": "debug, info, warning or error",
    "log_format": "text, or json (one JSON object per line); under systemd lines carry journald priorities",
    "shutdown_timeout": "seconds a graceful stop may take before it is forced",
    "http.host": "address the REST API listens on",
    "http.port": "port the REST API listens on",
    "http.body_timeout": "seconds a request body may take to arrive (then 408)",
    "http.max_body_bytes": "largest request body accepted (then 413)",
    "http.max_connections": "open API connections at most (the oldest idle one makes room; within the open-files "
    "limit)",
    "http.header_timeout": "seconds a connection may take to send its request head (then it is closed)",
    "http.advertise_url": "where the other orchestrators of a shared store reach this one's API (default "
    "http(s)://HOST:PORT)",
    "http.tls": "off, or auto: serve HTTPS with a certificate of a local CA made in STATE_DIR/tls (clients trust "
    "STATE_DIR/tls/ca.pem; the overhaul CLI does by itself)",
    "http.tls_cert": "serve HTTPS with this certificate (PEM, chain included); needs http.tls_key",
    "http.tls_key": "the private key of http.tls_cert (PEM)",
    "http.trusted_proxies": "addresses of reverse proxies whose Forwarded / X-Forwarded-Proto / X-Forwarded-Host "
    "headers say how clients reached the API (operation URLs follow them), separated by commas",
    "http.managed_identity": "serve the managed identity endpoint (/msi/token, App Service's protocol) to callers on "
    "this machine holding STATE_DIR/identity.secret: az login --identity (overhaul az-login)",
    "engine.engine": "podman (a private podman system service), a unix:// or tcp:// URL of a Docker or Podman "
    "engine, or memory (no containers, for trying the API)",
    "engine.runtime": "OCI runtime of the private podman service ('' keeps podman's default)",
    "engine.ulimits": "ulimits of every container, NAME=SOFT:HARD separated by commas",
    "engine.call_timeout": "seconds one engine call may take",
    "engine.docker_systemd": "give systemd containers what Docker (not Podman) needs for them",
    "engine.publish_address": "address instances publish their ports on (and are probed at)",
    "engine.service_restart_min": "first back-off, in seconds, before a dead private podman service is restarted",
    "engine.service_restart_max": "longest back-off between restarts of the private podman service",
    "health.watch_wait": "seconds one blocking query to an agent is held",
    "health.probe_interval": "load-balancer probe period, seconds",
    "health.reprobe_interval": "probe period right after a reimage until the first Healthy, seconds",
    "health.probe_timeout": "seconds one probe may take",
    "health.probe_grace_period": "seconds after a reimage before a failing load-balancer probe fails the instance",
    "health.retry_min": "first back-off while an agent cannot be reached, seconds",
    "health.retry_max": "longest back-off while an agent cannot be reached, seconds",
    "rollout.action_timeout": "seconds one reimage, commit or rollback may take before it is retried",
    "rollout.observe_every": "the engine is listed afresh at least this often during an attempt, seconds",
    "rollout.observe_unreachable_every": "how often, in seconds, the engine is listed while an upgraded instance's "
    "agent cannot be reached (it may have exited)",
    "rollout.retry_min": "first back-off after a transient engine error, seconds",
    "rollout.retry_max": "longest back-off after transient engine errors, seconds",
    "rollout.infra_deadline": "seconds a reimage is retried through an infrastructure fault (engine down, port "
    "taken, image missing) before the attempt ends naming it; never counted against the version",
    "rollout.host_outage_timeout": "seconds the instances of a host that does not answer are waited for, once "
    "nothing else is left to upgrade, before the attempt ends Faulted (HostUnreachable) leaving them as they are",
    "rollout.replication_parallel": "gallery images copied to hosts at once",
    "rollout.replication_timeout": "seconds one copy of a gallery image to a host may take",
    "rollout.replication_retry": "seconds before a failed copy of a gallery image to a host is tried again",
    "rollout.min_maintenance_window": "shortest maintenance window (OSImage) a configuration may have, seconds "
    "(Azure: 5 hours; lower it for labs and tests)",
    "rollout.restart_min": "first back-off before an attempt stopped by an unexpected error is resumed, seconds",
    "rollout.restart_max": "longest back-off between such resumptions, seconds",
    "history.keep": "attempts kept in each scale set's history (Azure: 5)",
    "history.max_age": "seconds an ended attempt stays in history (Azure: 2 months)",
    "auto_upgrade.first_delay": "seconds after publishing before a scale set's first automatic upgrade",
    "auto_upgrade.delay": "seconds after publishing before later automatic upgrades",
    "events.timeout": "seconds one event delivery (or a webhook's validation handshake) may take",
    "events.per_pass": "deliveries of one event subscription per pass",
}


@dataclass(frozen=True)
class Option:
    section: str  # "" for top-level fields
    name: str
    default: Any

    @property
    def key(self) -> str:
        return f"{self.section}.{self.name}" if self.section else self.name

    @property
    def flag(self) -> str:
        override = FLAG_OVERRIDES.get((self.section, self.name))
        if override:
            return override
        prefix = SECTIONS[self.section]
        name = self.name.replace("_", "-")
        return f"{prefix}-{name}" if prefix else name

    @property
    def dest(self) -> str:
        return self.flag.replace("-", "_")

    @property
    def env(self) -> str:
        return "OVERHAUL_" + self.dest.upper()


def options() -> list[Option]:
    found: list[Option] = []
    defaults = ServeSettings()
    for f in fields(ServeSettings):
        value = getattr(defaults, f.name)
        if f.name in SECTIONS:
            found += [Option(f.name, sub.name, getattr(value, sub.name)) for sub in fields(value)]
        else:
            found.append(Option("", f.name, value))
    return found


def coerce(option: Option, value: Any, source: str) -> Any:
    kind = type(option.default)
    where = f"{source} {option.key}"
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise SettingsError(f"{where}: must be true or false, got {value!r}")
    if kind in (int, float):
        if isinstance(value, bool):
            raise SettingsError(f"{where}: must be a number, got {value!r}")
        try:
            number = kind(value)
        except (TypeError, ValueError, OverflowError):
            raise SettingsError(f"{where}: must be a {'whole ' if kind is int else ''}number, got {value!r}") from None
        if not 0 <= number < float("inf"):
            raise SettingsError(f"{where}: must not be negative, got {value!r}")
        return number
    if not isinstance(value, str):
        raise SettingsError(f"{where}: must be a string, got {value!r}")
    return value


def _flatten(doc: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Config file keys: nested sections ({"engine": {"runtime": "runc"}}) or flag names with underscores."""
    by_key = {o.key: o for o in options()}
    by_dest = {o.dest: o for o in options()}
    flat: dict[str, Any] = {}
    for key, value in doc.items():
        if key in SECTIONS and key and isinstance(value, Mapping):
            for sub, sub_value in value.items():
                if f"{key}.{sub}" not in by_key:
                    raise SettingsError(f"{source}: unknown setting {key}.{sub}")
                flat[f"{key}.{sub}"] = sub_value
        elif key in by_key:
            flat[key] = value
        elif key in by_dest:
            flat[by_dest[key].key] = value
        else:
            raise SettingsError(f"{source}: unknown setting {key!r}")
    return flat


def _apply(settings: ServeSettings, values: Mapping[str, Any]) -> ServeSettings:
    top: dict[str, Any] = {}
    sections: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        section, _, name = key.rpartition(".")
        if section:
            sections.setdefault(section, {})[name] = value
        else:
            top[name] = value
    for section, changes in sections.items():
        top[section] = replace(getattr(settings, section), **changes)
    return replace(settings, **top)


def check(settings: ServeSettings) -> None:
    engine = settings.engine.engine
    if engine.startswith("ssh://"):
        # aiodocker's own ssh:// needs the docker CLI on the remote and trusts ~/.ssh/known_hosts: a remote engine is
        # a host of its own instead, reached with its key given (docs/hosts.md).
        raise SettingsError(
            f"engine: {engine!r} is another machine's engine: add it as a host (overhaul vm host create --engine "
            "ssh://… --host-key-file …), and keep --engine for this machine's"
        )
    if engine not in ENGINE_KINDS and not engine.startswith(("unix://", "tcp://")):
        raise SettingsError(f"engine: must be podman, memory, or a unix:// or tcp:// engine URL, got {engine!r}")
    if settings.log_level.lower() not in ("debug", "info", "warning", "error"):
        raise SettingsError(f"log_level: must be debug, info, warning or error, got {settings.log_level!r}")
    if settings.log_format not in ("text", "json"):
        raise SettingsError(f"log_format: must be text or json, got {settings.log_format!r}")
    if not 0 <= settings.http.port < 65536:
        raise SettingsError(f"http.port: must be 0..65535 (0: any free port), got {settings.http.port}")
    if settings.http.max_connections < 1:
        raise SettingsError(f"http.max_connections: must be at least 1, got {settings.http.max_connections}")
    if not 0 < settings.http.header_timeout <= 3600:
        raise SettingsError(
            f"http.header_timeout: must be above 0 and at most 3600, got {settings.http.header_timeout}"
        )
    parse_ulimits(settings.engine.ulimits)
    check_tls(settings.http)
    check_store(settings)


def check_tls(http: HttpSettings) -> None:
    if http.tls not in ("off", "auto"):
        raise SettingsError(f"http.tls: must be off or auto (or give http.tls_cert and http.tls_key), got {http.tls!r}")
    if bool(http.tls_cert) != bool(http.tls_key):
        missing = "http.tls_key" if http.tls_cert else "http.tls_cert"
        raise SettingsError(f"{missing}: http.tls_cert and http.tls_key are given together")
    if http.tls_cert and http.tls == "auto":
        raise SettingsError("http.tls: auto makes a local certificate; with http.tls_cert given leave it off")
    for path in (http.tls_cert, http.tls_key):
        if path and not Path(path).is_file():
            which = "http.tls_cert" if path == http.tls_cert else "http.tls_key"
            raise SettingsError(f"{which}: no such file {path!r}")
    for proxy in http.proxies:
        try:
            ipaddress.ip_address(proxy)
        except ValueError:
            raise SettingsError(
                f"http.trusted_proxies: {proxy!r} is not an IP address (proxies are named by the address they "
                "connect from)"
            ) from None


def check_store(settings: ServeSettings) -> None:
    store, lease = settings.store, settings.lease
    if "://" in store and not settings.shared_store:
        raise SettingsError(
            f"store: must be a SQLite file's path or a postgresql:// URL, got {store.split('://')[0]}://…"
        )
    if not settings.shared_store:
        return
    if settings.engine.engine == "podman":
        raise SettingsError(
            "engine.engine: the private Podman service lives on this machine alone; with a shared store every "
            "orchestrator must reach the same engines: give an engine URL (--engine unix://… or tcp://…) or hosts"
        )
    if settings.http.port == 0 and not settings.http.advertise_url:
        raise SettingsError(
            "http.port: with a shared store the other orchestrators forward writes to this one: give a port, or "
            "http.advertise_url"
        )
    if not 0 < lease.renew_every <= 60:
        raise SettingsError(f"lease.renew_every: must be above 0 and at most 60, got {lease.renew_every}")
    if lease.ttl < 3 * lease.renew_every:
        raise SettingsError(
            f"lease.ttl: must be at least 3 times lease.renew_every ({lease.renew_every:g}), got {lease.ttl:g}"
        )
    if not 0 < lease.max_skew <= 60:
        raise SettingsError(f"lease.max_skew: must be above 0 and at most 60, got {lease.max_skew}")


def parse_ulimits(text: str) -> tuple[tuple[str, int, int], ...]:
    limits = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, values = item.partition("=")
        soft, _, hard = values.partition(":")
        try:
            limits.append((name.strip(), int(soft), int(hard or soft)))
        except ValueError:
            raise SettingsError(f"engine.ulimits: {item!r} is not NAME=SOFT:HARD") from None
    return tuple(limits)


def load_settings(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> ServeSettings:
    environ = os.environ if environ is None else environ
    settings = ServeSettings()
    config = getattr(args, "config", None)
    by_key = {o.key: o for o in options()}
    if config:
        try:
            doc = json.loads(Path(config).read_text())
        except (OSError, ValueError) as exc:
            raise SettingsError(f"--config {config}: {exc}") from None
        if not isinstance(doc, Mapping):
            raise SettingsError(f"--config {config}: must hold a JSON object")
        flat = _flatten(doc, f"--config {config}")
        settings = _apply(settings, {k: coerce(by_key[k], v, f"--config {config}:") for k, v in flat.items()})
    from_env = {o.key: coerce(o, environ[o.env], o.env + ":") for o in options() if o.env in environ}
    settings = _apply(settings, from_env)
    from_flags = {
        o.key: coerce(o, getattr(args, o.dest), f"--{o.flag}:")
        for o in options()
        if getattr(args, o.dest, None) is not None
    }
    settings = _apply(settings, from_flags)
    check(settings)
    return settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", metavar="FILE.json", help='settings file: sections as below ({"engine": {"runtime": "runc"}})'
    )
    for option in options():
        kind = type(option.default)
        default = option.default if option.default != "" else "''"
        parser.add_argument(
            f"--{option.flag}",
            dest=option.dest,
            metavar="BOOL" if kind is bool else kind.__name__.upper(),
            help=f"{HELP.get(option.key, '')} [default {default}; env {option.env}; config {option.key}]",
        )
