"""A host's engine socket forwarded over SSH (`ssh -N -L local.sock:remote.sock`), as `docker -H ssh://` and
`podman --url ssh://` reach a remote engine, with the host's key given and checked (StrictHostKeyChecking=yes, a
known_hosts file of its own): never learnt on first use. Supervised like the private Podman service: a forward
that drops is opened again with back-off."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from overhaul.adapters.drivers.podman_service import SocketProcess
from overhaul.core.hosts import Host
from overhaul.ports.driver import DriverError

# ssh's words when the host's key is not the one given.
KEY_MISMATCH = ("Host key verification failed", "REMOTE HOST IDENTIFICATION HAS CHANGED", "No ED25519 host key")


class SshForward(SocketProcess):
    what = "the SSH forward"
    keep_stderr = True

    def __init__(self, host: Host, directory: Path, restart_min: float = 0.5, restart_max: float = 10.0) -> None:
        # Short names: a unix socket's path has room for 107 bytes.
        tag = hashlib.sha256(host.id.lower().encode()).hexdigest()[:12]
        super().__init__(directory / f"{tag}.sock", restart_min, restart_max)
        self.host = host
        self.known_hosts = directory / f"{tag}.known_hosts"
        self.what = f"the SSH forward to {host.engine.address}"

    def command(self) -> list[str]:
        engine, ssh = self.host.engine, shutil.which("ssh")
        if ssh is None:
            raise DriverError("ssh (OpenSSH's client) is not installed: hosts with ssh:// engines need it")
        assert engine.port is not None and engine.user is not None and self.host.ssh_key and self.host.host_key
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        where = engine.address if engine.port == 22 else f"[{engine.address}]:{engine.port}"
        self.known_hosts.write_text(f"{where} {self.host.host_key}\n")
        options = {
            "IdentitiesOnly": "yes",
            "UserKnownHostsFile": str(self.known_hosts),
            "GlobalKnownHostsFile": "/dev/null",
            "StrictHostKeyChecking": "yes",
            "BatchMode": "yes",
            "ExitOnForwardFailure": "yes",
            "StreamLocalBindUnlink": "yes",
            "ServerAliveInterval": "5",
            "ServerAliveCountMax": "3",
            "ConnectTimeout": "10",
            "LogLevel": "ERROR",
        }
        return [
            ssh,
            "-N",
            "-F",
            "/dev/null",  # no user's or system's ssh_config changes what is checked
            "-p",
            str(engine.port),
            "-i",
            self.host.ssh_key,
            *(arg for key, value in options.items() for arg in ("-o", f"{key}={value}")),
            "-L",
            f"{self.socket}:{engine.socket}",
            f"{engine.user}@{engine.address}",
        ]


def explain(error: DriverError) -> DriverError:
    """A forward that failed on the host's key says so plainly."""
    if any(words in str(error) for words in KEY_MISMATCH):
        return DriverError(
            f"host key mismatch: the host's key is not the one given (properties.overhaul.hostKey); {error}"
        )
    return error
