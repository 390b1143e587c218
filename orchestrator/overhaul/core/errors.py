"""The errors the orchestrator's commands raise: a stable code, a message, and the field they are about.

No HTTP status codes here: the REST adapter maps each kind to one."""

from __future__ import annotations

from collections.abc import Mapping


class OverhaulError(Exception):
    """A command could not be carried out; ``code`` is stable (Azure's where Azure has one)."""

    code = "BadRequest"

    def __init__(
        self,
        message: str,
        code: str | None = None,
        target: str | None = None,
        details: tuple[Mapping[str, str], ...] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.target = target
        self.details = details  # ARM's error details: here, why it was refused and what unblocks it
        if code is not None:
            self.code = code


class InvalidInput(OverhaulError):
    """The request is wrong; ``target`` names the field."""

    code = "InvalidParameter"


class NotFound(OverhaulError):
    code = "NotFound"


class Conflict(OverhaulError):
    """The request is fine but the resource's state does not allow it now (an attempt runs, a name is taken)."""

    code = "Conflict"


class Unavailable(OverhaulError):
    """Something the command needs (the engine) cannot be reached now; trying again later may work."""

    code = "ServiceUnavailable"
