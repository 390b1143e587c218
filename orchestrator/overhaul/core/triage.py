"""Pure: whom a failure blames, the image or the infrastructure, decided from what the driver reports.

A bad image is caught and a good one is not blamed. An infrastructure fault (the engine unreachable or restarting,
a host port taken, an image missing from the engine, a container the engine left in a state it cannot use, an IP
its network plugin still holds, a full disk) is retried until ``rollout.infra_deadline``; it never counts against
``maxUnhealthy*``, is never rolled back for and never quarantines. Anything else a driver step meets is the image's.
Codes are stable: docs/triage.md lists them."""

from __future__ import annotations

from enum import StrEnum


class Blame(StrEnum):
    INFRASTRUCTURE = "Infrastructure"
    IMAGE = "Image"
    # Unhealthy before the attempt touched it: neither the new image's fault nor the infrastructure's.
    PRE_EXISTING = "PreExisting"


class Fault(StrEnum):
    """What a failed driver step met; the value is the stable code an attempt ends with."""

    ENGINE_UNAVAILABLE = "EngineUnavailable"
    HOST_PORT_TAKEN = "HostPortTaken"
    IMAGE_UNAVAILABLE = "ImageUnavailable"
    ENGINE_LEFTOVER = "EngineLeftover"
    NETWORK_ADDRESS_HELD = "NetworkAddressHeld"
    DISK_FULL = "DiskFull"
    HOST_UNREACHABLE = "HostUnreachable"  # a host's engine did not answer (its instances are Unknown, not failed)
    # The step failed for a reason of the image's (its command, its configuration): the only image fault here.
    IMAGE_FAILED = "ImageFailed"

    @property
    def blame(self) -> Blame:
        return Blame.IMAGE if self is Fault.IMAGE_FAILED else Blame.INFRASTRUCTURE


# The engines' own words (Podman, Docker, their network plugins, the kernel), lower case, first match wins.
ENGINE_WORDS: tuple[tuple[str, Fault], ...] = (
    ("address already in use", Fault.HOST_PORT_TAKEN),
    ("port is already allocated", Fault.HOST_PORT_TAKEN),
    ("duplicate allocation", Fault.NETWORK_ADDRESS_HELD),
    ("no space left on device", Fault.DISK_FULL),
    ("disk quota exceeded", Fault.DISK_FULL),
    ("container state improper", Fault.ENGINE_LEFTOVER),
    ("is already in use", Fault.ENGINE_LEFTOVER),  # a name still held by a container the engine kept
    ("container not known", Fault.ENGINE_LEFTOVER),  # Podman's record of a container whose storage is gone
    ("no such image", Fault.IMAGE_UNAVAILABLE),
    ("image not known", Fault.IMAGE_UNAVAILABLE),
    ("layer not known", Fault.IMAGE_UNAVAILABLE),
    ("manifest unknown", Fault.IMAGE_UNAVAILABLE),
    ("error pulling", Fault.IMAGE_UNAVAILABLE),
    ("pull access denied", Fault.IMAGE_UNAVAILABLE),
    ("engine unreachable", Fault.ENGINE_UNAVAILABLE),
    ("connection refused", Fault.ENGINE_UNAVAILABLE),
    ("connection reset", Fault.ENGINE_UNAVAILABLE),
    ("broken pipe", Fault.ENGINE_UNAVAILABLE),  # the engine's own plumbing (e.g. Podman's copier) cut short
)


def infrastructure_fault(code: str | None) -> Fault | None:
    """The infrastructure fault an attempt's error code names (None: the code is no infrastructure fault's)."""
    return next((f for f in Fault if f.value == code and f.blame is Blame.INFRASTRUCTURE), None)


def classify(message: str) -> Fault:
    """The fault an engine's error message names; the image's when it names none of the infrastructure's."""
    text = message.lower()
    for words, fault in ENGINE_WORDS:
        if words in text:
            return fault
    return Fault.IMAGE_FAILED


REMEDIES: dict[Fault, str] = {
    Fault.ENGINE_UNAVAILABLE: "bring the container engine (or QEMU) back; /healthz says whether it answers",
    Fault.HOST_PORT_TAKEN: "free the host port, or widen the host-port range",
    Fault.IMAGE_UNAVAILABLE: "put the version's image back into the engine (podman load / docker load)",
    Fault.ENGINE_LEFTOVER: "remove the container the engine left behind (podman rm -f NAME)",
    Fault.NETWORK_ADDRESS_HELD: "release the address the network plugin still holds (podman network reload)",
    Fault.DISK_FULL: "free space on the engine's storage",
    Fault.HOST_UNREACHABLE: "bring the host back (its sshd, its engine, the network to it); `overhaul vm host list`",
    Fault.IMAGE_FAILED: "fix the image",
}


def infrastructure_end(fault: Fault, error: str, version: str) -> str:
    """The message of an attempt that ended because the infrastructure stayed broken past its deadline."""
    return (
        f"the infrastructure, not version {version}, failed for longer than rollout.infra_deadline: {error}. "
        f"The version stays eligible and no instance was counted against it. Next: {REMEDIES[fault]}, then start "
        "the upgrade again"
    )
