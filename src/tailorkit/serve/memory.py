"""Resident memory returns near its baseline after a burst of large requests.

Freed memory is not handed back to the OS by itself: glibc raises its mmap threshold after large frees
(up to 32 MB), so later large buffers (decoded images, pixel tensors, parsed bodies) come from heaps
that it keeps for reuse, one arena per thread, and the process stays at its peak for good. So a server
fixes the threshold (`return_large_buffers`: buffers over 4 MB are mapped and unmapped on their own),
and when no request is in progress `ReleaseWhenIdle` trims the heaps (``malloc_trim``). Elsewhere than
glibc both are no-ops.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import gc

M_MMAP_THRESHOLD = -3  # mallopt parameter (glibc malloc.h)
MMAP_THRESHOLD = 4 * 1024 * 1024


@functools.cache
def _libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


def return_large_buffers() -> None:
    """Allocations over 4 MB are mapped on their own and returned to the OS when freed (a fixed threshold
    also stops glibc from raising it after large frees)."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)


def release_memory() -> None:
    """Collect young garbage and hand freed heap memory back to the OS.

    Only the young generations are collected: a full collection walks every object of torch and transformers
    (most of a second, holding the GIL); large buffers are freed by reference counting anyway."""
    gc.collect(1)
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
