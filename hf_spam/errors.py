"""One error type for everything a user can get wrong, and the one-line report that scripts print.

``HfSpamError`` (a ``ValueError``) carries a message that names the file, field or value and what was
expected. ``UnavailableError`` is the one kind callers may want to tell apart: something the run needs
could not be obtained (offline without a cached copy, a download or a Hub call failed).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")

EXIT_BAD_INPUT = 2
EXIT_UNAVAILABLE = 3


class HfSpamError(ValueError):
    """A bad input (argument, config, data file, checkpoint, model folder); the message is one line."""


class UnavailableError(HfSpamError):
    """Something the run needs cannot be had here: offline and not cached, a failed download or Hub call."""


def one_line(err: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def without_secrets(text: str) -> str:
    """``text`` with the value after any token-like flag (``--token``, ``--hub_token``, even misspelt)
    hidden: for argparse messages that echo the command line (``unrecognized arguments: --tokn hf_...``)."""
    return re.sub(r"(--?[\w-]*tok[\w-]*)(=|\s+)(?!-)(\S+)", r"\1\2***", text, flags=re.IGNORECASE)


@contextmanager
def reported_errors() -> Iterator[None]:
    """Turn an ``HfSpamError`` into ``error: ...`` on stderr and exit status 2 (3 when unavailable)."""
    try:
        yield
    except HfSpamError as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        sys.exit(EXIT_UNAVAILABLE if isinstance(err, UnavailableError) else EXIT_BAD_INPUT)


def run_main(main: Callable[[], T]) -> T:
    """Run a script's ``main`` with ``reported_errors``: a newcomer sees one line, never a traceback."""
    with reported_errors():
        return main()
