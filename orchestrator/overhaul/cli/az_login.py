"""`overhaul az-login`: what the real az (azure-cli) needs to drive this machine's `overhaul serve` — the trust of
its local CA, the managed identity endpoint and its secret, the cloud registered from /metadata/endpoints and
`az login --identity` — as shell lines to run: eval "$(overhaul az-login)"."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from overhaul.cli.client import CliError, default_endpoint
from overhaul.defaults import default_state_dir

CLOUD = "overhaul"


def add_az_login_command(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = groups.add_parser(
        "az-login",
        help='print the shell lines that point az (azure-cli) at this serve: eval "$(overhaul az-login)"',
        description="Prints shell lines that register overhaul as an az cloud and sign az in with overhaul's managed "
        "identity (serve must run with TLS: --tls auto, or --tls-cert/--tls-key). Run them with "
        'eval "$(overhaul az-login)"; later az commands in that shell need the exported variables too.',
    )
    parser.add_argument(
        "--endpoint", default=None, help="the API's URL (default: where the state directory's serve listens)"
    )
    parser.add_argument("--cloud-name", default=CLOUD, help=f"the name az gives the cloud (default {CLOUD})")


def _read(path: Path, what: str) -> str:
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise CliError(
            f"{what} cannot be read at {path} ({exc.strerror}): is `overhaul serve` running with "
            "this state directory (OVERHAUL_STATE_DIR)?"
        ) from None


def az_login_lines(endpoint: str, state_dir: Path, cloud: str) -> list[str]:
    if not endpoint.startswith("https://"):
        raise CliError(
            f"az sends its token over https only, and {endpoint} is http: start `overhaul serve --tls auto` (a local "
            "CA in STATE_DIR/tls) or give it --tls-cert and --tls-key"
        )
    secret = _read(state_dir / "identity.secret", "the managed identity secret")
    base = endpoint.rstrip("/")
    ca = state_dir / "tls" / "ca.pem"
    lines = [f"# az (azure-cli) driving overhaul at {base}"]
    if ca.is_file():
        lines.append(f"export REQUESTS_CA_BUNDLE={shlex.quote(str(ca))}")
    lines += [
        f"export IDENTITY_ENDPOINT={shlex.quote(base + '/msi/token')}",
        f"export IDENTITY_HEADER={shlex.quote(secret)}",
        # Registered afresh: the address may have changed since the last time.
        "az cloud set --name AzureCloud >/dev/null 2>&1 || true",
        f"az cloud unregister --name {shlex.quote(cloud)} >/dev/null 2>&1 || true",
        f"az cloud register --name {shlex.quote(cloud)} --endpoint-resource-manager {shlex.quote(base)}",
        f"az cloud set --name {shlex.quote(cloud)}",
        "az login --identity --output none",
    ]
    return lines


def run_az_login(args: argparse.Namespace) -> int:
    endpoint = args.endpoint or default_endpoint()
    print("\n".join(az_login_lines(endpoint, default_state_dir(), args.cloud_name)))
    return 0
