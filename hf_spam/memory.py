"""Handing freed memory back to the operating system (used by the feature cache and the HTTP server)."""

from __future__ import annotations

import ctypes
import sys


def release_freed_memory() -> None:
    """Hand memory freed by a finished chunk or batch back to the OS: glibc keeps it otherwise, and a long run
    would go on with a fragmented, larger heap."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # musl or no glibc
            pass
