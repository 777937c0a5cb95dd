"""Leaving nothing behind: SIGTERM unwinds like Ctrl-C, and temporary files carry their owner's pid so that a
later run can remove those of processes that were killed outright (SIGKILL, out of memory)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager


class Terminated(BaseException):
    """SIGTERM arrived; raised in the main thread so that `with` blocks and `finally` clauses clean up."""

    exit_code = 128 + signal.SIGTERM


def _raise_terminated(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM during the clean-up ends the process at once
    raise Terminated()


@contextmanager
def terminate_like_interrupt() -> Iterator[None]:
    """While inside, SIGTERM raises Terminated (in the main thread; elsewhere nothing changes)."""
    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (one of another user counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
