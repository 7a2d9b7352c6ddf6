"""Node plumbing without ROS: queues, stamp pairing, sequence checks, throttled errors, rates.

Everything here is plain Python (thread-safe where noted) so it is unit-tested without
``rclpy.init()``; the nodes compose these pieces.

* :class:`KeepNewestQueue` - bounded, per-key queue that drops the *oldest* item when full
  (camera_calibration's ``BufferQueue`` behaviour) and counts drops.
* :class:`StampPairer` - pairs a camera's PoseStamped with its CameraInfo by stamp (exact, or
  within a tolerance), never "the latest".
* :class:`SequenceTracker` - validates ``GaussianMapUpdate`` sequence numbers.
* :class:`ErrorReporter` - logs errors throttled per kind, remembers the last one.
* :class:`RateMeter` - events per second over a sliding window.
"""
from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Hashable

from chorus_ros.core.errors import InvalidInputError

__all__ = ["KeepNewestQueue", "StampPairer", "SequenceTracker", "ErrorReporter", "RateMeter",
           "UPDATE_FULL", "UPDATE_DELTA"]

UPDATE_FULL = 0
UPDATE_DELTA = 1


class KeepNewestQueue:
    """Bounded FIFO per key that drops the oldest item of a key when that key is full.

    ``get`` returns the oldest queued item over all keys (fair across cameras). Thread-safe.

    Args:
        capacity: items kept per key (>= 1).
    """

    def __init__(self, capacity: int = 2) -> None:
        if int(capacity) < 1:
            raise ValueError(f"queue capacity must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        self._items: dict[Hashable, deque] = {}
        self._count = itertools.count()
        self._cv = threading.Condition()
        self._closed = False
        self.dropped = 0
        """Items discarded because a newer one arrived while the key's queue was full."""

    def put(self, item: Any, key: Hashable = None) -> Any | None:
        """Queue ``item``; returns the item dropped to make room (or None)."""
        with self._cv:
            q = self._items.setdefault(key, deque())
            dropped = None
            while len(q) >= self.capacity:
                dropped = q.popleft()[1]
                self.dropped += 1
            q.append((next(self._count), item))
            self._cv.notify()
            return dropped

    def get(self, timeout: float | None = None) -> Any | None:
        """Oldest item over all keys; None on timeout or when closed and empty."""
        with self._cv:
            end = None if timeout is None else time.monotonic() + timeout
            while not self._closed and not any(self._items.values()):
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._cv.wait(left)
            return self._pop_locked()

    def get_nowait(self) -> Any | None:
        with self._cv:
            return self._pop_locked()

    def _pop_locked(self) -> Any | None:
        best = None
        for q in self._items.values():
            if q and (best is None or q[0][0] < best[0][0]):
                best = q
        return best.popleft()[1] if best is not None else None

    def __len__(self) -> int:
        with self._cv:
            return sum(len(q) for q in self._items.values())

    def notify(self) -> None:
        """Wake a waiting ``get`` (it returns None if nothing is queued)."""
        with self._cv:
            self._cv.notify_all()

    def close(self) -> None:
        """Wake every waiter; later ``get`` calls return remaining items, then None."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()


class StampPairer:
    """Pairs two message streams of one camera by ``header.stamp``.

    A message is matched with the counterpart whose stamp is closest, if the difference is at
    most ``tolerance_ns`` (0 = exact match only). Matched messages and everything older in both
    buffers are discarded. Not thread-safe (use from one callback group).

    Args:
        tolerance_ns: largest accepted stamp difference, nanoseconds.
        buffer: unmatched messages kept per stream and key.
    """

    def __init__(self, tolerance_ns: int = 0, buffer: int = 10) -> None:
        self.tolerance_ns = int(tolerance_ns)
        self.buffer = int(buffer)
        self._a: dict[Hashable, deque] = {}
        self._b: dict[Hashable, deque] = {}

    def add_a(self, key: Hashable, stamp_ns: int, msg: Any) -> tuple[Any, Any, int] | None:
        """Add to stream A (poses); returns ``(a, b, stamp_ns_of_a)`` when matched."""
        m = self._add(self._a, self._b, key, stamp_ns, msg)
        return None if m is None else (m[0], m[1], stamp_ns)

    def add_b(self, key: Hashable, stamp_ns: int, msg: Any) -> tuple[Any, Any, int] | None:
        """Add to stream B (camera infos); returns ``(a, b, stamp_ns_of_a)`` when matched."""
        m = self._add(self._b, self._a, key, stamp_ns, msg)
        return None if m is None else (m[1], m[0], m[2])

    def _add(self, mine, other, key, stamp, msg):
        oq = other.setdefault(key, deque())
        best, best_dt = None, None
        for i, (s, _) in enumerate(oq):
            dt = abs(s - stamp)
            if dt <= self.tolerance_ns and (best_dt is None or dt < best_dt):
                best, best_dt = i, dt
        if best is None:
            q = mine.setdefault(key, deque(maxlen=self.buffer))
            q.append((stamp, msg))
            return None
        s_other, m_other = oq[best]
        for _ in range(best + 1):  # drop the match and everything older in the other stream
            oq.popleft()
        q = mine.setdefault(key, deque(maxlen=self.buffer))
        while q and q[0][0] <= stamp:
            q.popleft()
        return msg, m_other, s_other


@dataclass
class _SeqState:
    map_id: str | None = None
    last: int | None = None
    need_full: bool = False


class SequenceTracker:
    """Validates ``GaussianMapUpdate`` (map_id, sequence, update_type) before it is applied.

    * FULL updates are always accepted; they reset ``map_id`` and the sequence.
    * A DELTA must follow an applied FULL of the same ``map_id`` and carry ``last + 1``.
      Duplicates and out-of-order deltas (``<= last``) are rejected; a gap (``> last + 1``)
      means an update was lost, so deltas are discarded until the next FULL.

    :meth:`check` raises :class:`InvalidInputError`; call :meth:`commit` only after the update
    was applied successfully (a rejected update does not advance the sequence).
    """

    def __init__(self) -> None:
        self._s = _SeqState()

    @property
    def map_id(self) -> str | None:
        return self._s.map_id

    @property
    def last_sequence(self) -> int | None:
        return self._s.last

    @property
    def waiting_for_full(self) -> bool:
        return self._s.last is None or self._s.need_full

    def check(self, map_id: str, sequence: int, update_type: int) -> None:
        s = self._s
        if update_type == UPDATE_FULL:
            return
        if update_type != UPDATE_DELTA:
            raise InvalidInputError(f"unknown update_type {update_type} (0 = FULL, 1 = DELTA)")
        if s.last is None:
            raise InvalidInputError(f"DELTA update seq {sequence} of map {map_id!r} before any FULL "
                                    f"update; waiting for a full snapshot")
        if map_id != s.map_id:
            raise InvalidInputError(f"DELTA update for map {map_id!r} but the current map is "
                                    f"{s.map_id!r}; waiting for a FULL update of {map_id!r}")
        if s.need_full:
            raise InvalidInputError(f"DELTA update seq {sequence} discarded: an update was lost after "
                                    f"seq {s.last}; waiting for the next FULL update")
        if sequence <= s.last:
            raise InvalidInputError(f"out-of-order or duplicate DELTA update seq {sequence} "
                                    f"(last applied seq {s.last})")
        if sequence > s.last + 1:
            s.need_full = True
            raise InvalidInputError(f"sequence gap: DELTA update seq {sequence} after seq {s.last} "
                                    f"({sequence - s.last - 1} lost); discarding deltas until the "
                                    f"next FULL update")

    def commit(self, map_id: str, sequence: int, update_type: int) -> None:
        """Record an applied update."""
        self._s = _SeqState(map_id, int(sequence), False)

    def reset(self) -> None:
        self._s = _SeqState()


class ErrorReporter:
    """Logs errors throttled per kind and remembers the last one. Thread-safe.

    Args:
        log: ``log(text)`` function (e.g. ``node.get_logger().error``).
        throttle_s: an error of the same kind is logged at most once per this many seconds; the
            next logged line says how many were suppressed.
        keep: number of recent messages kept in :attr:`recent`.
        clock: monotonic clock (tests inject one).
    """

    def __init__(self, log: Callable[[str], Any], throttle_s: float = 5.0, keep: int = 50,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._log = log
        self.throttle_s = float(throttle_s)
        self._clock = clock
        self._last: dict[Hashable, float] = {}
        self._suppressed: dict[Hashable, int] = {}
        self._lock = threading.Lock()
        self.recent: deque[str] = deque(maxlen=keep)
        self.last_error = ""
        self.count = 0

    def report(self, context: str, error: BaseException | str, kind: Hashable = None) -> str:
        """Record (and maybe log) ``"<context>: <error>"``; returns that text."""
        text = f"{context}: {error}"
        key = (context, kind if kind is not None else type(error).__name__)
        now = self._clock()
        with self._lock:
            self.count += 1
            self.last_error = text
            self.recent.append(text)
            last = self._last.get(key)
            if last is not None and now - last < self.throttle_s:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return text
            n = self._suppressed.pop(key, 0)
            self._last[key] = now
        self._log(text + (f" ({n} similar errors suppressed)" if n else ""))
        return text


class RateMeter:
    """Events per second over the last ``window_s`` seconds. Thread-safe."""

    def __init__(self, window_s: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = float(window_s)
        self._clock = clock
        self._t: deque[float] = deque()
        self._lock = threading.Lock()

    def tick(self) -> None:
        with self._lock:
            self._t.append(self._clock())
            self._trim()

    def _trim(self) -> None:
        now = self._clock()
        while self._t and now - self._t[0] > self.window_s:
            self._t.popleft()

    def rate(self) -> float:
        with self._lock:
            self._trim()
            return len(self._t) / self.window_s if self._t else 0.0
