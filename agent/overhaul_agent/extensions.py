"""Runs the model's CustomScript extensions once per OS disk, in provisionAfterExtensions order.

Each extension's provisioning state is kept in the state directory on the OS disk: a restarted agent does not
run a succeeded extension again, while a reimage (a fresh OS disk, so a fresh state directory) runs them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import BinaryIO

from overhaul_agent.board import HealthBoard
from overhaul_agent.extension_plan import Extension, ExtensionStatus, ProvisioningState

log = logging.getLogger(__name__)
TAIL_BYTES = 4096


def _tail(path: Path) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - TAIL_BYTES))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def private_opener(path: str, flags: int) -> int:
    """Files of extension runs may hold protected settings or what scripts print of them: owner only."""
    fd = os.open(path, flags, 0o600)
    os.fchmod(fd, 0o600)  # also when the file existed with a wider mode
    return fd


def private_file(path: Path) -> BinaryIO:
    return open(path, "wb", opener=private_opener)


def private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)  # also when it existed with a wider mode


class ExtensionRunner:
    def __init__(self, extensions: Sequence[Extension], state_dir: Path, board: HealthBoard) -> None:
        self.extensions = list(extensions)
        self.root = state_dir / "extensions"
        self.board = board

    def _status_path(self, ext: Extension) -> Path:
        return self.root / ext.name / "status.json"

    def _workdir(self, ext: Extension) -> Path:
        """The extension's own directory (its status, stdout and stderr), owner only, as is the runner's root."""
        workdir = self.root / ext.name
        private_dir(self.root)
        private_dir(workdir)
        return workdir

    def _load(self, ext: Extension) -> ExtensionStatus | None:
        try:
            doc = json.loads(self._status_path(ext).read_text())
            return ExtensionStatus.from_json(doc)
        except (OSError, ValueError, KeyError):
            return None

    def _save(self, ext: Extension, status: ExtensionStatus) -> None:
        self._workdir(ext)
        path = self._status_path(ext)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8", opener=private_opener) as f:
            f.write(json.dumps(status.to_json()))
        os.replace(tmp, path)  # atomic: a crash never leaves half a status

    def _publish(self, ext: Extension, status: ExtensionStatus, *, persist: bool = True) -> None:
        if persist:
            self._save(ext, status)
        self.board.set_extension(status)

    def _settled(self, ext: Extension) -> ExtensionStatus | None:
        """A finished run of this same extension on this OS disk, which is not repeated."""
        previous = self._load(ext)
        if previous is None or previous.fingerprint != ext.fingerprint:
            return None
        if previous.state is ProvisioningState.TRANSITIONING:
            return None  # interrupted (agent killed mid-run): run it again
        return previous

    async def run(self) -> None:
        pending: list[Extension] = []
        for ext in self.extensions:
            settled = self._settled(ext)
            if settled is not None:
                self._publish(ext, settled, persist=False)
            else:
                waiting = ExtensionStatus(
                    ext.name, ext.type, ProvisioningState.TRANSITIONING, ext.fingerprint, message="waiting"
                )
                self._publish(ext, waiting, persist=False)
                pending.append(ext)
        failed: set[str] = {name for name, s in self.board.extensions.items() if s.state is ProvisioningState.FAILED}
        for ext in pending:
            blocked = [d for d in ext.provision_after if d in failed]
            if blocked:
                status = ExtensionStatus(
                    ext.name,
                    ext.type,
                    ProvisioningState.FAILED,
                    ext.fingerprint,
                    message=f"not run: it provisions after failed extension {blocked[0]}",
                )
                self._publish(ext, status)
                failed.add(ext.name)
                continue
            status = await self._run_one(ext)
            if status.state is ProvisioningState.FAILED:
                failed.add(ext.name)

    async def _execute(self, ext: Extension, workdir: Path, out_path: Path, err_path: Path) -> tuple[int | None, str]:
        """Runs the script in its own process group, its output to private files; (exit code or None, message)."""
        assert ext.command is not None
        with private_file(out_path) as out, private_file(err_path) as err:
            proc = await asyncio.create_subprocess_exec(
                "/bin/sh",
                "-c",
                ext.command,
                cwd=workdir,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
            try:
                async with asyncio.timeout(ext.timeout):
                    code = await proc.wait()
                message = "succeeded" if code == 0 else f"command exited with code {code}"
            except TimeoutError:
                code = None
                message = f"timed out after {ext.timeout:g}s"
            finally:
                if proc.returncode is None:
                    # The whole process group: a script's children must not outlive its verdict.
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(5):
                            await proc.wait()
        return code, message

    async def _run_one(self, ext: Extension) -> ExtensionStatus:
        started = time.time()
        status = ExtensionStatus(
            ext.name,
            ext.type,
            ProvisioningState.TRANSITIONING,
            ext.fingerprint,
            message="running",
            started_at=started,
        )
        if ext.command is None:
            # Not a script (e.g. ApplicationHealthLinux, which is this agent): configured by being read.
            done = replace(status, state=ProvisioningState.SUCCEEDED, message="configured", finished_at=started)
            self._publish(ext, done)
            return done
        self._publish(ext, status)
        workdir = self._workdir(ext)
        out_path, err_path = workdir / "stdout", workdir / "stderr"
        log.info("extension %s: running %r", ext.name, ext.command)
        code, message = await self._execute(ext, workdir, out_path, err_path)
        state = ProvisioningState.SUCCEEDED if code == 0 else ProvisioningState.FAILED
        done = replace(
            status,
            state=state,
            exit_code=code,
            message=message,
            finished_at=time.time(),
            stdout_tail=_tail(out_path),
            stderr_tail=_tail(err_path),
        )
        took = done.finished_at - started if done.finished_at is not None else 0.0
        log.log(
            logging.INFO if code == 0 else logging.WARNING,
            "extension %s: %s after %.1fs",
            ext.name,
            message,
            took,
            extra={"fields": {"extension": ext.name, "exitCode": code, "seconds": round(took, 3)}},
        )
        self._publish(ext, done)
        return done
