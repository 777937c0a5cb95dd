"""Worker threads around the frame loop: decode ahead of the model, encode behind it (bounded queues).

`Prefetch` iterates a source in a reader thread, `depth` items ahead; `Writer` consumes results in a
writer thread, in order. An exception in either thread is raised in the caller's thread, as itself,
at its next `next()` / `put()` or at `close()`; closing stops the thread (a Ctrl-C in the caller
leaves nothing running).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

_END = object()


class Prefetch:
    """Iterate `items` in a reader thread, applying `prepare` there, at most `depth` items ahead."""

    def __init__(self, items: Iterable[Any], prepare: Callable[[Any], Any] = lambda item: item, depth: int = 2):
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, args=(iter(items), prepare), name="movie-reader",
                                        daemon=True)
        self._thread.start()

    def _put(self, message: tuple) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(message, timeout=0.05)
                return
            except queue.Full:
                continue

    def _work(self, items: Iterator[Any], prepare: Callable[[Any], Any]) -> None:
        try:
            for item in items:
                if self._stop.is_set():
                    return
                self._put((True, prepare(item)))
            self._put((True, _END))
        except BaseException as exc:  # handed to the consumer, raised there as itself
            self._put((False, exc))

    def __iter__(self) -> Iterator[Any]:
        while True:
            ok, value = self._queue.get()
            if not ok:
                raise value
            if value is _END:
                return
            yield value

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


class Writer:
    """Call `write(item)` for each `put(item)` in a writer thread, in order, at most `depth` items behind."""

    def __init__(self, write: Callable[[Any], None], depth: int = 2):
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, args=(write,), name="movie-writer", daemon=True)
        self._thread.start()

    def _work(self, write: Callable[[Any], None]) -> None:
        while True:
            item = self._queue.get()
            if item is _END or self._stop.is_set():
                return
            try:
                write(item)
            except BaseException as exc:  # raised in the caller's thread at its next put() or close()
                self._error = exc
                self._stop.set()
                return

    def _check(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def put(self, item: Any) -> None:
        while True:
            self._check()
            if self._stop.is_set():
                raise RuntimeError("the writer thread was stopped")
            try:
                self._queue.put(item, timeout=0.05)
                return
            except queue.Full:
                continue

    def close(self) -> None:
        """Wait until every item is written; raise the writer's error if it had one."""
        while self._thread.is_alive():
            try:
                self._queue.put(_END, timeout=0.05)
                break
            except queue.Full:
                continue
        self._thread.join()
        self._check()

    def abort(self) -> None:
        """Stop without writing what is still queued (after an error or an interrupt in the caller)."""
        self._stop.set()
        while True:  # unblock a get() waiting on an empty queue
            try:
                self._queue.put_nowait(_END)
                break
            except queue.Full:
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    pass
        self._thread.join()
