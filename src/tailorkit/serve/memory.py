"""Resident memory returns near its baseline after a burst of large requests.

Freed memory is not handed back to the OS by itself: glibc keeps freed heap pages (in one arena per
thread) for reuse, so decoded images or a large parsed body would stay resident for good. When no
request is in progress, `ReleaseWhenIdle` runs a garbage collection and ``malloc_trim(0)``.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import gc


@functools.cache
def _libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def release_memory() -> None:
    """Collect garbage and hand freed heap memory back to the OS (glibc; elsewhere only the collection)."""
    gc.collect()
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


class ReleaseWhenIdle:
    """ASGI middleware: ``delay_s`` after the last request in progress ends, release memory (on a thread)."""

    def __init__(self, app, delay_s: float = 0.2):
        self.app, self.delay_s = app, delay_s
        self.active = 0
        self._scheduled = False

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1
            if self.active == 0 and not self._scheduled:
                self._scheduled = True
                asyncio.get_running_loop().call_later(self.delay_s, self._release)

    def _release(self) -> None:
        self._scheduled = False
        if self.active == 0:
            asyncio.get_running_loop().run_in_executor(None, release_memory)
