"""A container image streamed from one engine into another: ``GET /images/{name}/get`` into ``POST /images/load``,
a chunk at a time (never whole in memory), each chunk within the engines' call timeout."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

import aiodocker
import aiohttp

from overhaul.ports.driver import DriverError, EngineUnavailable

if TYPE_CHECKING:
    from overhaul.adapters.drivers.engine import EngineDriver

CHUNK = 1 << 20


async def stream_image(source: EngineDriver, target: EngineDriver, image: str, progress: Callable[[int], None]) -> None:
    """Copies ``image`` from ``source``'s engine into ``target``'s, saying how far it got (percent, by the
    image's size as the source reports it)."""
    size = await source.image_size(image)
    # No bound on the whole (an image of gigabytes over a slow link); each read waits one call timeout at most.
    stalled = aiohttp.ClientTimeout(total=None, sock_read=source.settings.call_timeout)
    sent = 0

    async def chunks(content: aiohttp.StreamReader) -> AsyncIterator[bytes]:
        nonlocal sent
        async for chunk in content.iter_chunked(CHUNK):
            sent += len(chunk)
            progress(min(99, sent * 100 // size) if size else 0)
            yield chunk

    what = f"copy image {image}"
    try:
        async with source.docker.images.export_image(image, timeout=stalled) as content:
            await target.docker.images.import_image(chunks(content), timeout=stalled)
    except aiodocker.DockerError as exc:
        raise DriverError(f"{what}: {exc.message}") from exc
    except TimeoutError as exc:
        raise EngineUnavailable(f"{what}: stalled for {source.settings.call_timeout:g}s") from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise EngineUnavailable(f"{what}: engine unreachable: {exc}") from exc
    if not await target.image_present(image):
        raise DriverError(f"{what}: the engine loaded it under another name")
    progress(100)
