"""The CLI's standard output once its reader is gone (``ephemeral up ... | head -1``).

The rule: output nobody reads any more is discarded, and never changes the command's result.
Left to itself a closed pipe did: rich's console ended the command with exit 1 (a failed
``up`` whose cluster is kept, where exit 1 means it was deleted), and a job's log stream died
in its thread with a traceback while the job ran on to its timeout.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any, TextIO, cast


class _ReaderGone:
    """``stream``, until a write or flush finds its reader gone; from then on nothing is
    written. The file descriptor is pointed at /dev/null, so that what the stream still holds
    (flushed at exit, by whichever thread) goes nowhere instead of failing again."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._gone = False
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        if not self._gone:
            try:
                self._stream.write(text)
            except BrokenPipeError:
                self._discard()
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if not self._gone:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._discard()

    def _discard(self) -> None:
        with self._lock:
            if self._gone:
                return
            self._gone = True
            with open(os.devnull, "w") as null:
                try:
                    os.dup2(null.fileno(), self._stream.fileno())
                except (OSError, ValueError):  # no descriptor (a test's stream): nothing held
                    pass

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding: the stream's
        return getattr(self._stream, name)


def discard_when_unread() -> None:
    """Apply the rule to ``sys.stdout`` for the rest of the process: every writer (rich's
    consoles, JSON documents, job-log sinks) writes through it."""
    if not isinstance(sys.stdout, _ReaderGone):
        sys.stdout = cast(TextIO, _ReaderGone(sys.stdout))
