"""One error type for everything a user can get wrong, and the one-line report that scripts print.

``HfSpamError`` (a ``ValueError``) carries a message that names the file, field or value and what was
expected. ``UnavailableError`` is the one kind callers may want to tell apart: something the run needs
could not be obtained (offline without a cached copy, a download or a Hub call failed).
"""

from __future__ import annotations

import errno
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")

EXIT_BAD_INPUT = 2
EXIT_UNAVAILABLE = 3


class HfSpamError(ValueError):
    """A bad input (argument, config, data file, checkpoint, model folder); the message is one line."""


class UnavailableError(HfSpamError):
    """Something the run needs cannot be had here: offline and not cached, a failed download or Hub call."""


class FileSystemError(OSError):
    """A file could not be written (full disk, I/O error, no permission), whichever library met it: exit 1, and the
    message (``strerror``) is the line printed."""

    def __str__(self) -> str:
        return str(self.strerror)


# File-system failures, by errno, and the messages that name them where a library (safetensors' Rust code:
# "... No space left on device (os error 28)") raises no OSError.
FILE_SYSTEM_ERRNOS = (errno.ENOSPC, errno.EIO, errno.EACCES, errno.EROFS, errno.EDQUOT)
OS_ERROR_CODE = re.compile(r"\(os error (\d+)\)")


def file_system_errno(err: BaseException | None) -> int | None:
    """The errno of a file-system failure (ENOSPC, EIO, EACCES, EROFS, EDQUOT) that ``err`` is or was raised from,
    read from ``errno`` or, failing that, from the message; ``None`` for any other exception."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if getattr(err, "errno", None) in FILE_SYSTEM_ERRNOS:
            return err.errno  # type: ignore[attr-defined]
        text = str(err)
        for code in FILE_SYSTEM_ERRNOS:
            if os.strerror(code) in text or any(int(c) == code for c in OS_ERROR_CODE.findall(text)):
                return code
        err = err.__cause__ or err.__context__
    return None


def one_line(err: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# A token-like flag (--token, --hub_token, even misspelt) and what a Hugging Face token looks like.
TOKEN_FLAG = re.compile(r"^--?[\w-]*tok[\w-]*$", re.IGNORECASE)
TOKEN_VALUE = re.compile(r"\bhf_[A-Za-z0-9]{16,}\b")


def hide_secrets(argv: Sequence[str]) -> list[str]:
    """``argv`` with the value of every token-like flag, and anything shaped like a token, replaced by ``***``:
    what may be written to a file or printed of a command line."""
    out = []
    for i, arg in enumerate(argv):
        flag, eq, _ = arg.partition("=")
        if eq and TOKEN_FLAG.match(flag):
            arg = f"{flag}=***"
        elif i and TOKEN_FLAG.match(argv[i - 1]) and not arg.startswith("-"):
            arg = "***"
        out.append(TOKEN_VALUE.sub("***", arg))
    return out


def without_secrets(text: str) -> str:
    """``text`` (a message that may echo a command line) with token values hidden as ``hide_secrets`` does."""
    return " ".join(hide_secrets(text.split(" ")))


@contextmanager
def reported_errors(interrupted: str = "interrupted") -> Iterator[None]:
    """Errors as one ``error: ...`` line on stderr, never a traceback: bad input exits 2, something that could
    not be had 3, a file-system failure (read-only, full disk, I/O error: any ``OSError``, or any exception whose
    errno or message says ENOSPC/EIO/EACCES/EROFS/EDQUOT) 1, Ctrl-C 130 with ``interrupted``."""
    try:
        yield
    except HfSpamError as err:
        print(f"error: {without_secrets(one_line(err))}", file=sys.stderr)
        sys.exit(EXIT_UNAVAILABLE if isinstance(err, UnavailableError) else EXIT_BAD_INPUT)
    except OSError as err:
        print(f"error: {without_secrets(one_line(err))}", file=sys.stderr)
        sys.exit(1)
    except Exception as err:  # a file-system failure raised as another type (safetensors' SafetensorError ...)
        if file_system_errno(err) is None:
            raise
        print(f"error: {without_secrets(one_line(err))}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print(f"error: {interrupted}", file=sys.stderr)
        sys.exit(130)


def run_main(main: Callable[[], T], interrupted: str = "interrupted") -> T:
    """Run a script's ``main`` with ``reported_errors``: a newcomer sees one line, never a traceback."""
    with reported_errors(interrupted):
        return main()
