"""The REST client under every command: requests with the token, ARM errors as exit codes, resource targets."""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from overhaul.defaults import DEFAULT_PORT, default_state_dir

API_VERSION = "2024-07-01"
TERMINAL = ("Completed", "Faulted", "Cancelled")


# Exit codes as az's: 1 an error, 2 a usage error (argparse), 3 a resource that does not exist.
EXIT_ERROR, EXIT_USAGE, EXIT_NOT_FOUND = 1, 2, 3


class CliError(Exception):
    def __init__(self, message: str, exit_code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Client:
    def __init__(
        self,
        endpoint: str,
        token: str,
        subscription: str,
        *,
        timeout: float = 120.0,
        debug: bool = False,
        verbose: bool = False,
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.token = token
        self.subscription = subscription
        self.timeout = timeout
        self.debug = debug
        self.verbose = verbose or debug
        self.tls = tls_context(self.endpoint)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        sep = "&" if "?" in path else "?"
        url = f"{self.endpoint}{path}{sep}api-version={API_VERSION}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        started = time.monotonic()
        if self.debug:
            print(f"overhaul: {method} {url}", file=sys.stderr)
            if data is not None:
                print(f"overhaul: request body {data.decode()[:2000]}", file=sys.stderr)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout, context=self.tls) as resp:
                raw = resp.read()
                status = resp.status
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            if self.debug:
                print(f"overhaul: {exc.code} in {time.monotonic() - started:.3f}s: {raw[:2000]!r}", file=sys.stderr)
            elif self.verbose:
                print(f"overhaul: {method} {path} -> {exc.code} in {time.monotonic() - started:.3f}s", file=sys.stderr)
            code = EXIT_NOT_FOUND if exc.code == 404 else EXIT_ERROR
            try:
                err = json.loads(raw)["error"]
                message = f"({err.get('code')}) {err.get('message')}"
            except (ValueError, KeyError, TypeError):
                message = f"HTTP {exc.code}: {raw[:300]!r}"
            raise CliError(message, code) from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, ssl.SSLCertVerificationError):
                raise CliError(
                    f"the orchestrator at {self.endpoint} presented a certificate this machine does not trust "
                    f"({exc.reason.verify_message}): a serve with `--tls auto` has its CA in STATE_DIR/tls/ca.pem, "
                    "which the CLI trusts when OVERHAUL_STATE_DIR names that directory"
                ) from None
            raise CliError(
                f"cannot reach the orchestrator at {self.endpoint}: {exc.reason} (is `overhaul serve` running?)"
            ) from None
        if self.debug:
            print(f"overhaul: {status} in {time.monotonic() - started:.3f}s", file=sys.stderr)
        elif self.verbose:
            print(f"overhaul: {method} {path} -> {status} in {time.monotonic() - started:.3f}s", file=sys.stderr)
        return json.loads(raw) if raw.strip() else None

    def list(self, path: str) -> list[Any]:
        """The items of an ARM list answer ({"value": [...]})."""
        doc = self.call("GET", path)
        items = doc.get("value") if isinstance(doc, dict) else doc
        return items if isinstance(items, list) else []

    def vmss(self, rg: str, name: str = "") -> str:
        provider = "providers/Microsoft.Compute/virtualMachineScaleSets"
        base = f"/subscriptions/{self.subscription}/resourceGroups/{rg}/{provider}"
        return f"{base}/{name}" if name else base

    def gallery(self, rg: str, gallery: str, image: str) -> str:
        return (
            f"/subscriptions/{self.subscription}/resourceGroups/{rg}/providers/Microsoft.Compute"
            f"/galleries/{gallery}/images/{image}"
        )


def tls_context(endpoint: str) -> ssl.SSLContext | None:
    """For an https endpoint: the system's trust, and the local CA of the state directory's serve (--tls auto)."""
    if not endpoint.startswith("https://"):
        return None
    context = ssl.create_default_context()
    ca = default_state_dir() / "tls" / "ca.pem"
    if ca.is_file():
        context.load_verify_locations(ca)
    return context


def default_endpoint() -> str:
    """OVERHAUL_ENDPOINT, else where the state directory's serve said it listens, else the default port."""
    if os.environ.get("OVERHAUL_ENDPOINT"):
        return os.environ["OVERHAUL_ENDPOINT"]
    try:
        written = (default_state_dir() / "endpoint").read_text().strip()
    except OSError:
        written = ""
    return written if written.startswith(("http://", "https://")) else f"http://127.0.0.1:{DEFAULT_PORT}"


def find_token(args: argparse.Namespace) -> str:
    if os.environ.get("OVERHAUL_TOKEN"):
        return os.environ["OVERHAUL_TOKEN"].strip()
    path = Path(args.token_file) if args.token_file else default_state_dir() / "token"
    try:
        return path.read_text().strip()
    except OSError:
        raise CliError(
            f"no API token at {path}: start `overhaul serve` (it writes one there), or point the CLI at the state "
            "directory of the serve you talk to (OVERHAUL_STATE_DIR, or --token-file STATE_DIR/token), or give the "
            "token itself in OVERHAUL_TOKEN"
        ) from None


def target_from_ids(client: Client, args: argparse.Namespace, provider: str, name_attr: str, flag: str) -> None:
    """The resource a command is about: the name flag and -g, or --ids with a full resource id (which names the
    subscription too), as az takes them. ``provider``: e.g. Microsoft.Compute/galleries."""
    if getattr(args, "ids", None):
        parts = args.ids.strip("/").split("/")
        lowered = [p.lower() for p in parts]
        if (
            len(parts) != 8
            or lowered[0] != "subscriptions"
            or lowered[2] != "resourcegroups"
            or "/".join(lowered[5:7]) != provider.lower()
        ):
            raise CliError(
                f"--ids {args.ids!r}: expected /subscriptions/SUB/resourceGroups/GROUP/providers/{provider}/NAME",
                EXIT_USAGE,
            )
        client.subscription, args.resource_group = parts[1], parts[3]
        setattr(args, name_attr, parts[7])
    elif not (getattr(args, name_attr) and args.resource_group):
        raise CliError(
            f"{flag} and --resource-group/-g are required (or --ids; a default group comes from "
            "`overhaul configure --defaults group=NAME`)",
            EXIT_USAGE,
        )


DELETE_POLL = 0.5


def wait_deleted(client: Client, path: str, what: str) -> None:
    """Until a long-running DELETE has removed ``path``; an error when the deletion stopped (the resource reads
    Deleting no more, and says why under properties.overhaul.lastDeleteError)."""
    deadline = time.monotonic() + client.timeout * 10
    while time.monotonic() < deadline:
        try:
            doc = client.call("GET", path)
        except CliError as exc:
            if exc.exit_code == EXIT_NOT_FOUND:
                return
            raise
        props = doc.get("properties", {}) if isinstance(doc, dict) else {}
        if props.get("provisioningState") != "Deleting":
            why = (props.get("overhaul", {}).get("lastDeleteError") or {}).get("message", "it was not deleted")
            raise CliError(f"{what} was not deleted: {why}")
        time.sleep(DELETE_POLL)
    raise CliError(f"{what} is still being deleted (waited {client.timeout * 10:g}s)")
