"""Node plumbing without ROS: queues, stamp pairing, sequence checks, throttled errors, rates.

Everything here is plain Python (thread-safe where noted) so it is unit-tested without
``rclpy.init()``; the nodes compose these pieces.

* :class:`KeepNewestQueue` - bounded, per-key queue that drops the *oldest* item when full
  (camera_calibration's ``BufferQueue`` behaviour) and counts drops.
* :class:`StampPairer` - pairs a camera's PoseStamped with its CameraInfo by stamp (exact, or
  within a tolerance), never "the latest".
* :class:`SequenceTracker` - validates ``GaussianMapUpdate`` sequence numbers.
* :class:`ErrorReporter` - logs errors throttled per kind, remembers the last one.
* :class:`MapOwnership` - which map a node follows; refuses updates of other maps.
* :func:`guarded` - decorator: a callback's unexpected exception becomes a reported error (and a
  failed service response), never the end of the executor.
* :class:`RateMeter` - events per second over a sliding window.
* :class:`DropCounter` - counts dropped work by reason (for ``~/status``).
* :class:`StampRateLimiter` - per-key rate limit by message stamp that survives stamp rewinds.
"""
from __future__ import annotations

import functools
import itertools
import os
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Hashable

from chorus_ros.core.errors import InvalidInputError

__all__ = ["KeepNewestQueue", "StampPairer", "SequenceTracker", "ErrorReporter", "RateMeter",
           "DropCounter", "StampRateLimiter", "MapOwnership", "ForeignMapError", "guarded",
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
        self.unpaired = {"a": 0, "b": 0}
        """Messages of each stream discarded without a partner (pushed out of the buffer, or
        older than a later match)."""
        self.last_gap_ns: int | None = None
        """Smallest stamp distance to any counterpart among the last messages discarded unpaired
        (None when they never had a counterpart)."""

    def add_a(self, key: Hashable, stamp_ns: int, msg: Any) -> tuple[Any, Any, int] | None:
        """Add to stream A (poses); returns ``(a, b, stamp_ns_of_a)`` when matched."""
        m = self._add(self._a, self._b, key, stamp_ns, msg, "a", "b")
        return None if m is None else (m[0], m[1], stamp_ns)

    def add_b(self, key: Hashable, stamp_ns: int, msg: Any) -> tuple[Any, Any, int] | None:
        """Add to stream B (camera infos); returns ``(a, b, stamp_ns_of_a)`` when matched."""
        m = self._add(self._b, self._a, key, stamp_ns, msg, "b", "a")
        return None if m is None else (m[1], m[0], m[2])

    def _add(self, mine, other, key, stamp, msg, me, them):
        oq = other.setdefault(key, deque())
        best, best_dt, near = None, None, None
        for i, e in enumerate(oq):          # e = [stamp, msg, nearest counterpart distance]
            dt = abs(e[0] - stamp)
            near = dt if near is None else min(near, dt)
            e[2] = dt if e[2] is None else min(e[2], dt)
            if dt <= self.tolerance_ns and (best_dt is None or dt < best_dt):
                best, best_dt = i, dt
        q = mine.setdefault(key, deque(maxlen=self.buffer))
        if best is None:
            if len(q) == q.maxlen:
                self._discard(me, [q[0]])       # the oldest falls out unmatched
            q.append([stamp, msg, near])
            return None
        s_other, m_other, _ = oq[best]
        self._discard(them, [oq[i] for i in range(best)])   # older ones skipped by this match
        for _ in range(best + 1):  # drop the match and everything older in the other stream
            oq.popleft()
        old = []
        while q and q[0][0] <= stamp:
            old.append(q.popleft())
        self._discard(me, old)
        return msg, m_other, s_other

    def _discard(self, stream: str, entries: list) -> None:
        if not entries:
            return
        self.unpaired[stream] += len(entries)
        gaps = [e[2] for e in entries if e[2] is not None]
        self.last_gap_ns = min(gaps) if gaps else None


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


class ForeignMapError(InvalidInputError):
    """A map update for a map this node does not follow (see :class:`MapOwnership`)."""


class MapOwnership:
    """Which map a node follows (its ``map_id`` and ``follow_any_map`` parameters).

    * ``map_id`` set: only updates of that map are applied; a FULL update of another map
      (even an empty one) cannot replace or wipe it.
    * ``map_id`` empty: the node adopts the map id of the first FULL update it applies (or of a
      save restored by LoadMap) and from then on behaves as if configured with it.
    * ``follow_any``: a FULL update of any map is accepted and makes that map the owned one (the
      behaviour before ownership existed); a DELTA still needs a FULL of its own map first
      (:class:`SequenceTracker`).

    :meth:`check` raises :class:`ForeignMapError` and counts the refusal; :meth:`commit` records
    an applied update. Not thread-safe (the node's worker uses it).
    """

    def __init__(self, map_id: str = "", follow_any: bool = False) -> None:
        self.configured = str(map_id)
        self.follow_any = bool(follow_any)
        self.owner: str | None = self.configured or None
        self.refused = 0
        """Updates refused because they were for another map."""

    def configure(self, map_id: str, follow_any: bool) -> None:
        """Apply changed parameters: a new non-empty ``map_id`` becomes the owner at once;
        an empty one keeps the map already adopted."""
        if map_id != self.configured and map_id:
            self.owner = map_id
        self.configured, self.follow_any = str(map_id), bool(follow_any)

    def check(self, map_id: str, update_type: int) -> None:
        if self.owner is None or map_id == self.owner:
            return
        if self.follow_any and update_type == UPDATE_FULL:
            return
        self.refused += 1
        how = "parameter map_id" if self.configured else "adopted from its first FULL update; parameter map_id"
        kind = "FULL" if update_type == UPDATE_FULL else "DELTA"
        raise ForeignMapError(f"{kind} update for map {map_id!r} refused: this node follows map {self.owner!r} "
                              f"({how}); set follow_any_map to let FULL updates of other maps replace it")

    def commit(self, map_id: str, update_type: int) -> None:
        """Record an applied update (a FULL makes its map the owned one)."""
        if update_type == UPDATE_FULL or self.owner is None:
            self.owner = map_id

    def may_adopt(self, map_id: str) -> bool:
        """True when a save of ``map_id`` may be restored with its sequence (LoadMap 'restore')."""
        return self.owner is None or self.owner == map_id or self.follow_any


def guarded(context: str, *, service: bool = False) -> Callable:
    """Decorator for node callbacks: any exception the callback lets escape (beyond the errors it
    handles itself) is reported through ``node.errors`` (the ``~/status`` last_error and the log,
    with where it happened) instead of ending the executor. For a service (``service=True``) the
    response comes back with ``success = false`` and that text as ``message``, and
    ``node.drops`` (when the node has one) counts a 'service_rejected'.

    The decorated method is ``method(node, *args)``; for services the last argument is the
    response object."""
    def deco(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(node, *args):
            try:
                return fn(node, *args)
            except Exception as e:  # noqa: BLE001 - the point: nothing may end the executor
                tb = traceback.extract_tb(e.__traceback__)
                where = f" (at {os.path.basename(tb[-1].filename)}:{tb[-1].lineno} in {tb[-1].name})" if tb else ""
                text = node.errors.report(context, f"unexpected {type(e).__name__}: {e}{where}")
                if not service:
                    return None
                drops = getattr(node, "drops", None)
                if drops is not None:
                    drops.add("service_rejected")
                res = args[-1]
                res.success, res.message = False, text
                return res
        return wrapper
    return deco


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


class DropCounter:
    """Counts of dropped work by reason (``{reason: count}``), for ``~/status``. Thread-safe."""

    def __init__(self, reasons: tuple[str, ...] = ()) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {r: 0 for r in reasons}

    def add(self, reason: str, n: int = 1) -> None:
        if n:
            with self._lock:
                self._counts[reason] = self._counts.get(reason, 0) + int(n)

    def set(self, reason: str, n: int) -> None:
        """Mirror a count kept elsewhere (e.g. the keep-newest queue's ``dropped``)."""
        with self._lock:
            self._counts[reason] = int(n)

    def get(self, reason: str) -> int:
        with self._lock:
            return self._counts.get(reason, 0)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def total(self, prefix: str = "") -> int:
        with self._lock:
            return sum(v for k, v in self._counts.items() if k.startswith(prefix))


class StampRateLimiter:
    """Accepts at most ``max_rate_hz`` messages per key, judged by their stamps (0 = unlimited).

    A stamp older than the last accepted one (a rewind: bag restarted, simulation reset, clock
    jump) would otherwise block every later message until the stamps catch up again; it resets
    the key's limiter instead, is accepted and is counted in :attr:`rewinds`. Not thread-safe.
    """

    def __init__(self, max_rate_hz: float = 0.0) -> None:
        self.max_rate_hz = float(max_rate_hz)
        self._last: dict[Hashable, int] = {}
        self.rewinds = 0

    def accept(self, key: Hashable, stamp_ns: int) -> str:
        """'ok' (accepted), 'rewind' (accepted after resetting the limiter) or 'limited'."""
        last = self._last.get(key)
        if last is not None and stamp_ns < last:
            self.rewinds += 1
            self._last[key] = stamp_ns
            return "rewind"
        if self.max_rate_hz > 0 and last is not None and stamp_ns - last < 1e9 / self.max_rate_hz:
            return "limited"
        self._last[key] = stamp_ns
        return "ok"
