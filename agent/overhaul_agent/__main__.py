"""overhaul-agent: probe the local application and serve its health, like Azure's Application Health. SIGTERM or
SIGINT stops it gracefully; a second signal forces the exit."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence

from overhaul_agent import logs
from overhaul_agent.agent import Agent
from overhaul_agent.config import AgentConfig, build_parser, load_config
from overhaul_agent.settings import SettingsError

log = logging.getLogger("overhaul.agent")
SIGNALS = (signal.SIGTERM, signal.SIGINT)


async def serve(config: AgentConfig) -> int:
    agent = Agent(config)
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if agent.stop.is_set():
            log.warning("second signal: exiting now")
            os._exit(1)
        agent.stop.set()

    for sig in SIGNALS:
        loop.add_signal_handler(sig, on_signal)
    try:
        return await agent.run()
    finally:
        for sig in SIGNALS:
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.setup(args.log_level, args.log_format)
    try:
        config = load_config(args)
    except SettingsError as exc:
        print(f"overhaul-agent: {exc}", file=sys.stderr)
        return 2
    if args.check:
        print(
            json.dumps(
                {
                    "settings": config.settings.to_json() if config.settings else None,
                    "extensions": [e.name for e in config.metadata.extensions],
                },
                indent=2,
            )
        )
        return 0
    return asyncio.run(serve(config))


if __name__ == "__main__":
    sys.exit(main())
