"""The agent's command line and configuration: flags, the settings file, --probe overrides and the metadata
document, read into one AgentConfig (a clear message naming the file or flag when something is wrong)."""

from __future__ import annotations

import argparse
import json
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from overhaul_agent import __version__, logs
from overhaul_agent.metadata import InstanceMetadata, load_json_file, parse_metadata
from overhaul_agent.probe import tls_context
from overhaul_agent.settings import ProbeSettings, SettingsError, parse_settings

EPILOG = """\
Probe settings come from, lowest precedence first: the ApplicationHealthLinux extension in the metadata
document, the --settings file, then --probe KEY=VALUE flags (VALUE is JSON, e.g. --probe port=8080
--probe overhaul.fastProbes=true). The keys are Azure's: protocol, port, requestPath, intervalInSeconds,
numberOfProbes, gracePeriod; overhaul's own extras live under "overhaul" (probeTimeoutInSeconds, verifyTls,
caFile, fastProbes, host).

Endpoints: GET /health (200 when Healthy, else 503; ?wait=S&etag=E blocks until the verdict changes),
GET /metrics (Prometheus), and the TCP health port, which accepts connections only while Healthy.
"""


@dataclass(frozen=True)
class AgentConfig:
    settings: ProbeSettings | None
    metadata: InstanceMetadata
    host: str
    port: int
    tcp_port: int | None
    state_dir: Path
    max_connections: int = 1000
    header_timeout: float = 10.0
    # Platform notices (platform.json) sit beside the metadata file on the config drive.
    metadata_path: str | None = None
    # Notices the orchestrator pushes (a VM's config drive cannot change): they live as long as the instance runs.
    runtime_dir: Path | None = None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="overhaul-agent",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--settings", metavar="FILE.json", help="Application Health extension settings object")
    parser.add_argument(
        "--metadata",
        metavar="FILE.json",
        help="instance metadata document from the orchestrator (platform.json beside it: platform notices)",
    )
    parser.add_argument("--probe", metavar="KEY=VALUE", action="append", default=[], help="override one probe setting")
    parser.add_argument("--host", default="0.0.0.0", help="address to serve on (default: %(default)s)")
    parser.add_argument(
        "--port", type=int, default=8090, help="HTTP port for /health and /metrics (default: %(default)s)"
    )
    parser.add_argument(
        "--tcp-port", type=int, default=8091, help="TCP health port, 0 to disable (default: %(default)s)"
    )
    parser.add_argument(
        "--state-dir",
        default="/var/lib/overhaul-agent",
        type=Path,
        help="where extension states and logs are kept, on the OS disk (default: %(default)s)",
    )
    parser.add_argument(
        "--runtime-dir",
        default="/run/overhaul-agent",
        type=Path,
        help="where platform notices pushed by the orchestrator are kept until the instance stops "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=1000,
        help="open HTTP connections at most; at the cap the oldest that sent no request yet is closed "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--header-timeout",
        type=float,
        default=10.0,
        help="seconds a connection may take to send its request head (default: %(default)s)",
    )
    parser.add_argument("--check", action="store_true", help="validate the configuration, print it, and exit")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument(
        "--log-format",
        default="text",
        choices=list(logs.FORMATS),
        help="text, or json (one object per line); under systemd lines carry journald priorities",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def _apply_override(doc: dict[str, Any], item: str) -> None:
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise SettingsError("--probe", f"expected KEY=VALUE, got {item!r}")
    try:
        value: Any = json.loads(raw)
    except RecursionError as exc:
        raise SettingsError("--probe", f"{item[:60]!r}: nested too deeply") from exc
    except ValueError:
        value = raw  # a bare word such as http or /health
    *parents, leaf = key.split(".")
    target = doc
    for part in parents:
        child = target.setdefault(part, {})
        if not isinstance(child, dict):
            raise SettingsError(f"settings.{part}", "must be a JSON object")
        target = child
    target[leaf] = value


def _unwrap_settings(doc: Any) -> Any:
    # Accept a whole extension properties object ({"settings": {...}}) as well as the bare settings.
    if isinstance(doc, Mapping) and "settings" in doc and set(doc) <= {"settings", "protectedSettings"}:
        return doc["settings"]
    return doc


def load_config(args: argparse.Namespace) -> AgentConfig:
    metadata = parse_metadata(load_json_file(args.metadata, "--metadata")) if args.metadata else InstanceMetadata()
    merged: dict[str, Any] = {}
    if metadata.health_settings is not None:
        merged.update(json.loads(json.dumps(metadata.health_settings)))
    if args.settings:
        from_file = _unwrap_settings(load_json_file(args.settings, "--settings"))
        if not isinstance(from_file, Mapping):
            raise SettingsError("settings", f"{args.settings} must hold a JSON object")
        merged.update(from_file)
    for item in args.probe:
        _apply_override(merged, item)
    settings = parse_settings(merged) if merged else None
    if settings is not None:
        try:
            tls_context(settings)
        except (OSError, ssl.SSLError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise SettingsError("settings.overhaul.caFile", f"cannot load {settings.ca_file}: {reason}") from exc
    if settings is None and not metadata.extensions:
        raise SettingsError(
            "settings",
            "nothing to do: give --settings FILE.json, --probe flags, or --metadata with extensions",
        )
    for flag, port in (("--port", args.port), ("--tcp-port", args.tcp_port)):
        if not 0 <= port <= 65535:
            raise SettingsError(flag, f"must be 0..65535, got {port}")
    if args.max_connections < 1:
        raise SettingsError("--max-connections", f"must be at least 1, got {args.max_connections}")
    if not 0 < args.header_timeout <= 3600:
        raise SettingsError(
            "--header-timeout", f"must be above 0 and at most 3600 seconds, got {args.header_timeout:g}"
        )
    return AgentConfig(
        settings=settings,
        metadata=metadata,
        host=args.host,
        port=args.port,
        tcp_port=args.tcp_port or None,
        state_dir=args.state_dir,
        max_connections=args.max_connections,
        header_timeout=args.header_timeout,
        metadata_path=args.metadata,
        runtime_dir=args.runtime_dir,
    )
