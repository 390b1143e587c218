"""The events hub: listeners subscribe, emitters emit; a failing listener is logged, never the emitter's problem."""

from __future__ import annotations

import logging

from overhaul.ports.events import Event, Listener

log = logging.getLogger(__name__)


class EventBus:
    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def emit(self, event: Event) -> None:
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                log.exception("an event listener failed on %s", type(event).__name__)
