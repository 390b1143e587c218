"""QEMU VMs as instances: a daemonized QEMU process per OS disk, each OS disk a qcow2 overlay on a version's base.

An instance is a directory of its own under the driver's root::

    {root}/{scale set}/{instance id}/
        state.json              which OS disk is current, and (mid-reimage) which is the previous one
        data/{volume}.qcow2     its data disks (ext4, labelled lunN), never touched by a reimage
        disks/{os disk}/        one per OS disk: disk.json (how it boots), os.qcow2 (the overlay), cfg.img (its
                                config drive: metadata.json and the data disks' mount paths on vfat CFGDRIVE),
                                qemu.pid, qmp.sock, serial.log

The config drive cannot change while the VM runs, so platform notices (osRollingUpgradeDeferral) are pushed to the
agent inside (``PUT /platform/tags`` on its forwarded port, with the OS disk's own ``platformToken`` from its
metadata); they live as long as that VM does.

A reimage powers the current VM off (ACPI, then ``quit`` after the stop timeout), names it the previous OS disk,
makes a new overlay on the target base and boots it; commit drops the previous one, rollback drops the new one and
boots the previous one again. With maxSurge the previous VM keeps running until the commit. VMs outlive
``overhaul serve``; ``observe`` rebuilds everything from these directories, the pid files and /proc, and every step
reads them first, so repeating a step after a crash finishes or undoes what was half done.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
import shutil
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from overhaul.adapters.drivers.notices import push_notice
from overhaul.core.model import Accel, VmOptions
from overhaul.localhost import free_port
from overhaul.ports.driver import DriverError, InstanceSpec, InstanceState, OsDisk

from .qmp import exited, power_off

log = logging.getLogger(__name__)

ARTEFACTS = ("base.qcow2", "vmlinuz", "initrd.img")
STATE = "state.json"
DISK_RECORD = "disk.json"
PID_FILE = "qemu.pid"
QMP_SOCKET = "qmp.sock"
CONFIG_LABEL = "CFGDRIVE"
DATA_DISKS_FILE = "datadisks"  # on the config drive: "LABEL MOUNTPATH" per line; the guest mounts them by label
LUN = re.compile(r"_lun(\d+)$")
HOSTFWD_FAILED = "host forwarding rule"  # QEMU's "Could not set up host forwarding rule '...'"


@dataclass(frozen=True)
class QemuSettings:
    root: Path  # where instance directories live (the state directory's vms/)
    qemu: str = "qemu-system-x86_64"
    qemu_img: str = "qemu-img"
    tb_size_mb: int = 64  # TCG's translation cache: QEMU's default (1 GiB) doubles a VM's memory
    launch_timeout: float = 60.0  # QEMU's launcher returns once the VM is set up, before the guest boots
    call_timeout: float = 120.0  # qemu-img, mke2fs, mkfs.vfat
    kvm_probe_timeout: float = 5.0  # a kernel under working KVM panics (no root) in well under a second
    publish_address: str = "127.0.0.1"
    port_retries: int = 5
    notice_timeout: float = 30.0  # a platform notice waits this long for an agent that is not answering yet


@dataclass(frozen=True)
class DiskRecord:
    """How an OS disk boots: written once when it is made, so a rollback boots it as it was."""

    version: str
    image: str  # the version's artefact directory
    model_digest: str
    ports: dict[int, int]  # guest port -> host port
    data: tuple[tuple[str, str], ...]  # (data disk file name, its label)
    memory_mb: int
    vcpus: int
    accel: str
    token: str = ""  # the platformToken its agent accepts notices with

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "image": self.image,
            "model": self.model_digest,
            "ports": {str(k): v for k, v in self.ports.items()},
            "data": [list(d) for d in self.data],
            "memoryMB": self.memory_mb,
            "vCPUs": self.vcpus,
            "accel": self.accel,
            "token": self.token,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> DiskRecord:
        return cls(
            version=str(doc["version"]),
            image=str(doc["image"]),
            model_digest=str(doc.get("model", "")),
            ports={int(k): int(v) for k, v in doc.get("ports", {}).items()},
            data=tuple((str(f), str(label)) for f, label in doc.get("data", [])),
            memory_mb=int(doc["memoryMB"]),
            vcpus=int(doc["vCPUs"]),
            accel=str(doc["accel"]),
            token=str(doc.get("token", "")),
        )


def _write_json(path: Path, doc: Any) -> None:
    """Atomically: a crash leaves the whole file or the previous one."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(json.dumps(doc, indent=2))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise DriverError(f"read {path}: {exc}") from exc


def _label(volume: str) -> str:
    """A data disk's file system label: lunN, from its name (ext4 labels are at most 16 bytes)."""
    match = LUN.search(volume)
    return f"lun{match.group(1)}" if match else volume[-16:]


@contextlib.contextmanager
def _short(directory: Path) -> Iterator[Path]:
    """``directory`` by a path short enough for a unix socket inside it (at most 108 bytes, which a deep state
    directory exceeds): /proc/self/fd/N of an O_PATH descriptor."""
    fd = os.open(directory, os.O_PATH | os.O_DIRECTORY)
    try:
        yield Path(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


class QemuDriver:
    """The driver protocol over QEMU (KVM or TCG) for VM scale sets."""

    def __init__(self, settings: QemuSettings) -> None:
        self.settings = settings
        self._accel: str | None = None
        self._accel_lock = asyncio.Lock()

    # --- processes --------------------------------------------------------------------------------------------

    async def _run(self, what: str, *args: str, timeout: float | None = None) -> str:
        try:
            proc = await asyncio.create_subprocess_exec(
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise DriverError(f"{what}: {args[0]}: {exc}") from exc
        try:
            async with asyncio.timeout(timeout or self.settings.call_timeout):
                out, err = await proc.communicate()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            limit = timeout or self.settings.call_timeout
            raise DriverError(f"{what}: {args[0]} did not finish within {limit}s") from None
        if proc.returncode != 0:
            message = err.decode(errors="replace").strip()
            raise DriverError(f"{what}: {args[0]} exited with {proc.returncode}: {message}")
        return out.decode(errors="replace")

    def _instance_dir(self, scale_set: str, instance_id: int) -> Path:
        return self.settings.root / scale_set / str(instance_id)

    @staticmethod
    def _guest_name(directory: Path) -> str:
        """QEMU's -name: tells our process from any other that got a recycled pid."""
        return f"overhaul:{directory.parent.parent.parent.name}/{directory.parent.parent.name}/{directory.name}"

    def _pid(self, directory: Path) -> int | None:
        """The pid of the QEMU running this OS disk, or None."""
        try:
            pid = int((directory / PID_FILE).read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return None
        name = self._guest_name(directory).encode()
        if name not in cmdline:
            return None
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return None  # ended, not yet reaped by whoever adopted it
        except (OSError, IndexError):
            return None
        return pid

    def pid(self, scale_set: str, instance_id: int) -> int | None:
        """The pid of the QEMU running the instance's current OS disk, or None."""
        instance = self._instance_dir(scale_set, instance_id)
        current, _ = self._state(instance)
        return self._pid(instance / "disks" / current) if current else None

    async def _stop(self, directory: Path, stop_timeout: float) -> None:
        """Powers the VM off: gracefully within ``stop_timeout`` (0: at once)."""
        pid = self._pid(directory)
        if pid is None:
            return
        with _short(directory) as short:
            await power_off(short / QMP_SOCKET, pid, stop_timeout)

    async def _drop(self, instance: Path, disk: str) -> None:
        """Ends an OS disk's VM at once and removes the disk."""
        directory = instance / "disks" / disk
        await self._stop(directory, 0)
        shutil.rmtree(directory, ignore_errors=True)

    # --- acceleration -------------------------------------------------------------------------------------------

    async def accel(self, requested: str, kernel: Path) -> str:
        """KVM when asked for, or when ``auto`` and a short probe boot under KVM ends as it should; TCG otherwise."""
        if requested != Accel.AUTO.value:
            return requested
        async with self._accel_lock:
            if self._accel is None:
                self._accel = "kvm" if await self._kvm_works(kernel) else "tcg"
                log.info("VMs run under %s", self._accel.upper())
        return self._accel

    async def _kvm_works(self, kernel: Path) -> bool:
        if not os.access("/dev/kvm", os.R_OK | os.W_OK):
            return False
        # A kernel with no root file system panics and, with -no-reboot, QEMU exits: seconds under TCG, a blink
        # under KVM. Where KVM is present but cannot run a guest, it never gets there.
        try:
            await self._run(
                "probe KVM",
                self.settings.qemu,
                "-accel", "kvm", "-machine", "pc", "-m", "128", "-nodefaults", "-no-user-config",
                "-display", "none", "-no-reboot", "-kernel", str(kernel), "-append", "panic=-1 loglevel=0",
                timeout=self.settings.kvm_probe_timeout,
            )  # fmt: skip
        except DriverError as exc:
            log.info("KVM does not run guests here (%s): TCG", exc)
            return False
        return True

    # --- disks ----------------------------------------------------------------------------------------------

    async def _data_disk(self, instance: Path, volume: str, size_gb: int) -> str:
        """The data disk's file, made once (ext4, labelled by LUN, sparse); its file name."""
        data = instance / "data"
        data.mkdir(parents=True, exist_ok=True)
        target = data / f"{volume}.qcow2"
        if target.exists():
            return target.name
        raw = data / f".{volume}.raw"
        tmp = data / f".{volume}.qcow2"
        raw.unlink(missing_ok=True)
        await self._run(
            f"make data disk {volume}",
            "mke2fs", "-q", "-F", "-t", "ext4", "-L", _label(volume),
            "-E", "lazy_itable_init=1,lazy_journal_init=1", str(raw), f"{size_gb}G",
        )  # fmt: skip
        try:
            await self._run(
                f"make data disk {volume}", self.settings.qemu_img, "convert", "-O", "qcow2", str(raw), str(tmp)
            )
        finally:
            raw.unlink(missing_ok=True)
        os.replace(tmp, target)
        return target.name

    async def _config_drive(
        self, directory: Path, spec: InstanceSpec, data: tuple[tuple[str, str], ...], token: str
    ) -> None:
        """A small vfat disk labelled CFGDRIVE: the metadata.json containers get (with the token platform notices
        are pushed with), and where to mount data disks."""
        drive = directory / "cfg.img"
        drive.unlink(missing_ok=True)
        await self._run("make config drive", "mkfs.vfat", "-n", CONFIG_LABEL, "-C", str(drive), "2048")
        files = {"metadata.json": json.dumps({**spec.metadata, "platformToken": token}, indent=2)}
        mounts = dict(spec.volumes)
        files[DATA_DISKS_FILE] = "".join(f"{label} {mounts[f.removesuffix('.qcow2')]}\n" for f, label in data)
        for name, text in files.items():
            source = directory / name
            fd = os.open(source, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # protectedSettings are in it
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            try:
                await self._run("write config drive", "mcopy", "-o", "-i", str(drive), str(source), f"::{name}")
            finally:
                source.unlink(missing_ok=True)

    async def _make(self, instance: Path, spec: InstanceSpec) -> Path:
        """The OS disk of ``spec``, made unless it exists: overlay, config drive, data disks, its record."""
        directory = instance / "disks" / spec.disk
        if (directory / DISK_RECORD).exists():
            return directory
        vm = spec.vm or VmOptions()
        sizes = spec.data_disk_gb
        files = [await self._data_disk(instance, volume, sizes.get(volume, 1)) for volume, _ in spec.volumes]
        data = tuple(zip(files, (_label(volume) for volume, _ in spec.volumes), strict=True))
        tmp = instance / "disks" / f".{spec.disk}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        base = Path(spec.image) / "base.qcow2"
        await self._run(
            f"make the OS disk of {spec.name}",
            self.settings.qemu_img, "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2",
            str(tmp / "os.qcow2"),
        )  # fmt: skip
        token = secrets.token_urlsafe(24)
        await self._config_drive(tmp, spec, data, token)
        record = DiskRecord(
            version=spec.version,
            image=spec.image,
            model_digest=spec.model_digest,
            ports=dict(spec.ports),
            data=data,
            memory_mb=vm.memory_mb,
            vcpus=vm.vcpus,
            accel=vm.accel.value,
            token=token,
        )
        _write_json(tmp / DISK_RECORD, record.to_json())
        shutil.rmtree(directory, ignore_errors=True)  # half made by a step that was interrupted
        os.replace(tmp, directory)
        return directory

    # --- booting ------------------------------------------------------------------------------------------------

    def _command(self, directory: Path, record: DiskRecord, accel: str) -> list[str]:
        image = Path(record.image)
        hostfwd = "".join(
            f",hostfwd=tcp:{self.settings.publish_address}:{host}-:{guest}" for guest, host in record.ports.items()
        )
        drives = ["-drive", "file=os.qcow2,if=virtio,format=qcow2"]  # first: the guest's vda
        drives += ["-drive", "file=cfg.img,if=virtio,format=raw,readonly=on"]
        for name, _ in record.data:
            drives += ["-drive", f"file={directory.parent.parent / 'data' / name},if=virtio,format=qcow2"]
        accel_arg = f"tcg,tb-size={self.settings.tb_size_mb}" if accel == "tcg" else accel
        # Paths of its own directory are relative (QEMU starts in it): a unix socket path has at most 108 bytes.
        return [
            self.settings.qemu,
            "-name", self._guest_name(directory),
            "-machine", "pc", "-accel", accel_arg, "-m", str(record.memory_mb), "-smp", str(record.vcpus),
            "-display", "none", "-monitor", "none", "-serial", "file:serial.log",
            "-kernel", str(image / "vmlinuz"), "-initrd", str(image / "initrd.img"),
            "-append", self._cmdline(image),
            *drives,
            "-netdev", f"user,id=n0{hostfwd}", "-device", "virtio-net-pci,netdev=n0",
            "-qmp", f"unix:{QMP_SOCKET},server=on,wait=off",
            "-daemonize", "-pidfile", PID_FILE,
        ]  # fmt: skip

    @staticmethod
    def _cmdline(image: Path) -> str:
        try:
            return (image / "cmdline").read_text().strip()
        except FileNotFoundError:
            return "root=LABEL=rootfs rw console=ttyS0 quiet"

    async def _boot(self, directory: Path) -> None:
        """Starts the OS disk's VM unless it runs. A host port taken since it was chosen makes QEMU exit: the
        disk then gets other ones (``observe`` reports them)."""
        if self._pid(directory) is not None:
            return
        doc = _read_json(directory / DISK_RECORD)
        if doc is None:
            raise DriverError(f"boot {directory}: the OS disk has no {DISK_RECORD}")
        record = DiskRecord.from_json(doc)
        accel = await self.accel(record.accel, Path(record.image) / "vmlinuz")
        for attempt in range(self.settings.port_retries + 1):
            for stale in (PID_FILE, QMP_SOCKET):
                (directory / stale).unlink(missing_ok=True)
            proc = await asyncio.create_subprocess_exec(
                *self._command(directory, record, accel),
                cwd=directory,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,  # the VM is not ours to stop on a Ctrl-C of the orchestrator
            )
            try:
                async with asyncio.timeout(self.settings.launch_timeout):
                    _, err = await proc.communicate()
            except TimeoutError:
                proc.kill()
                await proc.wait()
                limit = self.settings.launch_timeout
                raise DriverError(f"boot {directory.name}: QEMU was not set up within {limit}s") from None
            message = err.decode(errors="replace").strip()
            if proc.returncode == 0 and self._pid(directory) is not None:
                return
            if HOSTFWD_FAILED in message and attempt < self.settings.port_retries:
                record = replace(record, ports={guest: free_port() for guest in record.ports})
                _write_json(directory / DISK_RECORD, record.to_json())
                log.info("boot %s: a host port was taken; forwarding %s instead", directory, record.ports)
                continue
            raise DriverError(f"boot {directory.name}: QEMU exited with {proc.returncode}: {message}")

    # --- state ----------------------------------------------------------------------------------------------

    @staticmethod
    def _state(instance: Path) -> tuple[str | None, str | None]:
        doc = _read_json(instance / STATE) or {}
        return doc.get("current"), doc.get("previous")

    @staticmethod
    def _set_state(instance: Path, current: str | None, previous: str | None) -> None:
        instance.mkdir(parents=True, exist_ok=True)
        _write_json(instance / STATE, {"current": current, "previous": previous})

    async def _sweep(self, instance: Path) -> None:
        """Removes OS disks neither current nor previous (left by a step interrupted between its two writes)."""
        keep = set(self._state(instance))
        disks = instance / "disks"
        for directory in disks.iterdir() if disks.is_dir() else ():
            if directory.name not in keep:
                await self._drop(instance, directory.name)

    @staticmethod
    def _record(instance: Path, disk: str | None) -> DiskRecord | None:
        """How an OS disk boots; None while it is not made."""
        doc = _read_json(instance / "disks" / disk / DISK_RECORD) if disk is not None else None
        return DiskRecord.from_json(doc) if doc is not None else None

    def _os_disk(self, instance: Path, disk: str | None) -> OsDisk | None:
        record = self._record(instance, disk)
        if record is None or disk is None:
            return None
        running = self._pid(instance / "disks" / disk) is not None
        return OsDisk(record.version, record.image, running, record.model_digest or None)

    # --- the driver protocol ------------------------------------------------------------------------------------

    async def host_port(self, taken: Collection[int]) -> int:
        return free_port(taken)  # QEMU forwards from this machine's loopback

    async def ping(self) -> None:
        if shutil.which(self.settings.qemu) is None:
            raise DriverError(f"{self.settings.qemu} is not installed: VM scale sets need QEMU")

    async def image_present(self, image: str, *, vm: bool = False) -> bool:
        if not vm:
            return False
        await self.ping()
        return all((Path(image) / name).is_file() for name in ARTEFACTS)

    async def _require_image(self, spec: InstanceSpec) -> None:
        if not await self.image_present(spec.image, vm=True):
            raise DriverError(f"create {spec.name}: no VM artefacts ({', '.join(ARTEFACTS)}) in {spec.image!r}")

    async def observe(self, scale_set: str) -> dict[int, InstanceState]:
        base = self.settings.root / scale_set
        states: dict[int, InstanceState] = {}
        for instance in base.iterdir() if base.is_dir() else ():
            if not instance.name.isdigit() or not (instance / STATE).exists():
                continue
            current_disk, previous_disk = self._state(instance)
            current = self._os_disk(instance, current_disk)
            previous = self._os_disk(instance, previous_disk)
            if current is None and previous is None:
                continue
            record = self._record(instance, current_disk) if current is not None else None
            ports = record.ports if record is not None else {}
            i = int(instance.name)
            states[i] = InstanceState(i, current, previous, self.settings.publish_address, ports)
        return dict(sorted(states.items()))

    async def ensure_running(self, spec: InstanceSpec) -> None:
        instance = self._instance_dir(spec.scale_set, spec.instance_id)
        current, previous = self._state(instance)
        if current is not None and self._os_disk(instance, current) is not None:
            await self._boot(instance / "disks" / current)
            return
        await self._require_image(spec)
        self._set_state(instance, spec.disk, previous)
        await self._boot(await self._make(instance, spec))

    async def reimage(self, spec: InstanceSpec) -> None:
        instance = self._instance_dir(spec.scale_set, spec.instance_id)
        current, previous = self._state(instance)
        if spec.surge and spec.volumes:
            raise DriverError(f"reimage {spec.name}: no maxSurge with data disks (attached to one VM at a time)")
        if current != spec.disk:  # else a repeated step: what follows finds each part done
            await self._require_image(spec)
            if current is not None and self._os_disk(instance, current) is not None:
                if previous is not None and previous != current:
                    await self._drop(instance, previous)  # left by an older, finished step
                previous = current
            self._set_state(instance, spec.disk, previous)
        if previous is not None and not spec.surge:
            await self._stop(instance / "disks" / previous, spec.stop_timeout)
        await self._boot(await self._make(instance, spec))

    async def commit(self, spec: InstanceSpec) -> None:
        instance = self._instance_dir(spec.scale_set, spec.instance_id)
        current, previous = self._state(instance)
        if previous is None:
            return
        # With maxSurge it still serves: powered off as a shutdown would, so it can finish what it is doing.
        await self._stop(instance / "disks" / previous, spec.stop_timeout)
        await self._drop(instance, previous)
        self._set_state(instance, current, None)
        await self._sweep(instance)

    async def rollback(self, spec: InstanceSpec) -> None:
        instance = self._instance_dir(spec.scale_set, spec.instance_id)
        current, previous = self._state(instance)
        if previous is None or self._os_disk(instance, previous) is None:
            if current is None or self._os_disk(instance, current) is None:
                raise DriverError(f"rollback {spec.name}: it has neither a new nor a previous OS disk")
            await self._boot(instance / "disks" / current)  # already rolled back
            return
        # A previous VM still running (maxSurge) was told of the upgrade that is now over.
        await self._notify_disk(spec, instance / "disks" / previous, {})
        if current is not None and current != previous:
            await self._drop(instance, current)
        self._set_state(instance, previous, None)
        await self._sweep(instance)
        await self._boot(instance / "disks" / previous)

    async def notify(self, spec: InstanceSpec, tags: Mapping[str, str]) -> None:
        instance = self._instance_dir(spec.scale_set, spec.instance_id)
        for disk in dict.fromkeys(d for d in self._state(instance) if d is not None):
            await self._notify_disk(spec, instance / "disks" / disk, tags)

    async def _notify_disk(self, spec: InstanceSpec, directory: Path, tags: Mapping[str, str]) -> None:
        doc = _read_json(directory / DISK_RECORD)
        if doc is None or self._pid(directory) is None:
            return  # a VM that does not run has no notice: it boots with none
        record = DiskRecord.from_json(doc)
        port = record.ports.get(spec.agent_port)
        if port is None or not record.token:
            raise DriverError(f"notify {spec.name}: its agent's port {spec.agent_port} is not forwarded")
        try:
            await push_notice(self.settings.publish_address, port, record.token, tags, self.settings.notice_timeout)
        except DriverError as exc:
            if tags:
                raise
            # A notice withdrawn from an agent that cannot be reached: it goes with the VM (nothing is approved
            # by it meanwhile, as the upgrade it named is over).
            log.warning("withdraw the notice of %s: %s", spec.name, exc)

    async def delete(self, spec: InstanceSpec, *, keep_data: bool = True) -> None:
        instance = self._instance_dir(spec.scale_set, spec.instance_id)
        disks = instance / "disks"
        for directory in disks.iterdir() if disks.is_dir() else ():
            await self._drop(instance, directory.name)
        if keep_data:
            shutil.rmtree(disks, ignore_errors=True)
            (instance / STATE).unlink(missing_ok=True)
        else:
            shutil.rmtree(instance, ignore_errors=True)
            scale_set = instance.parent
            if scale_set.is_dir() and not any((i / STATE).exists() for i in scale_set.iterdir()):
                # The scale set's last instance: data disks of instances scaled in before go with it.
                shutil.rmtree(scale_set, ignore_errors=True)
        with contextlib.suppress(OSError):
            instance.parent.rmdir()  # the scale set's directory, once it holds nothing

    async def close(self) -> None:
        return None  # VMs outlive the orchestrator


__all__ = ["QemuDriver", "QemuSettings", "exited"]
