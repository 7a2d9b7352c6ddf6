"""Node plumbing without ROS: keep-newest queue, stamp pairing, sequence checks, throttling."""
import threading

import pytest

from chorus_ros.core.errors import InvalidInputError
from chorus_ros.ros.runtime import (UPDATE_DELTA, UPDATE_FULL, ErrorReporter, KeepNewestQueue,
                                    RateMeter, SequenceTracker, StampPairer)


def test_keep_newest_drops_oldest_per_key_and_counts():
    q = KeepNewestQueue(2)
    assert q.put(1, "a") is None and q.put(2, "a") is None
    assert q.put(3, "a") == 1          # full: the oldest goes
    q.put(10, "b")
    assert q.dropped == 1 and len(q) == 3
    assert [q.get_nowait() for _ in range(4)] == [2, 3, 10, None]  # global FIFO across keys


def test_keep_newest_get_blocks_until_put_and_close_wakes():
    q = KeepNewestQueue(1)
    out = []
    t = threading.Thread(target=lambda: out.append(q.get(timeout=5)))
    t.start()
    q.put("x")
    t.join(5)
    assert out == ["x"]
    assert q.get(timeout=0.01) is None
    t = threading.Thread(target=lambda: out.append(q.get()))
    t.start()
    q.close()
    t.join(5)
    assert out == ["x", None]
    with pytest.raises(ValueError):
        KeepNewestQueue(0)


def test_pairer_exact_stamps_never_latest():
    p = StampPairer(0)
    assert p.add_a("c0", 100, "pose100") is None
    assert p.add_a("c0", 200, "pose200") is None
    assert p.add_b("c0", 150, "info150") is None           # no exact partner
    assert p.add_b("c0", 100, "info100") == ("pose100", "info100", 100)
    assert p.add_b("c1", 200, "info200_c1") is None        # other camera does not match
    assert p.add_b("c0", 200, "info200") == ("pose200", "info200", 200)
    # info150 was older than the matched 200 and has been discarded
    assert p.add_a("c0", 150, "pose150") is None


def test_pairer_tolerance_picks_closest():
    p = StampPairer(10)
    p.add_b("c", 95, "i95")
    p.add_b("c", 103, "i103")
    assert p.add_a("c", 100, "p100") == ("p100", "i103", 100)
    assert p.add_a("c", 200, "p200") is None and p.add_b("c", 215, "i215") is None


def test_sequence_tracker_rules():
    s = SequenceTracker()
    with pytest.raises(InvalidInputError, match="before any FULL"):
        s.check("m", 0, UPDATE_DELTA)
    s.check("m", 5, UPDATE_FULL)
    s.commit("m", 5, UPDATE_FULL)
    s.check("m", 6, UPDATE_DELTA)
    s.commit("m", 6, UPDATE_DELTA)
    with pytest.raises(InvalidInputError, match="out-of-order or duplicate"):
        s.check("m", 6, UPDATE_DELTA)
    with pytest.raises(InvalidInputError, match="out-of-order"):
        s.check("m", 3, UPDATE_DELTA)
    with pytest.raises(InvalidInputError, match="current map is 'm'"):
        s.check("other", 7, UPDATE_DELTA)
    with pytest.raises(InvalidInputError, match="unknown update_type 7"):
        s.check("m", 7, 7)
    s.check("m", 7, UPDATE_DELTA)                       # nothing failed so far: still fine
    with pytest.raises(InvalidInputError, match="sequence gap"):
        s.check("m", 9, UPDATE_DELTA)
    with pytest.raises(InvalidInputError, match="waiting for the next FULL"):
        s.check("m", 7, UPDATE_DELTA)                   # after a gap even the right seq waits
    assert s.waiting_for_full and s.last_sequence == 6
    s.check("m", 0, UPDATE_FULL)
    s.commit("m", 0, UPDATE_FULL)
    s.check("m", 1, UPDATE_DELTA)


def test_error_reporter_throttles_per_kind():
    t = [0.0]
    logged = []
    r = ErrorReporter(logged.append, throttle_s=5.0, clock=lambda: t[0])
    r.report("map update", InvalidInputError("bad a"))
    r.report("map update", InvalidInputError("bad b"))
    r.report("view", InvalidInputError("bad c"))
    t[0] = 6.0
    r.report("map update", InvalidInputError("bad d"))
    assert logged == ["map update: bad a", "view: bad c",
                      "map update: bad d (1 similar errors suppressed)"]
    assert r.count == 4 and r.last_error == "map update: bad d" and len(r.recent) == 4


def test_rate_meter():
    t = [0.0]
    m = RateMeter(2.0, clock=lambda: t[0])
    for i in range(4):
        t[0] = i * 0.5
        m.tick()
    assert m.rate() == 2.0
    t[0] = 10.0
    assert m.rate() == 0.0


def test_stamp_rate_limiter_survives_rewinds():
    from chorus_ros.ros.runtime import StampRateLimiter
    lim = StampRateLimiter(2.0)                  # at most one per 0.5 s of stamps
    s = 1_000_000_000
    assert [lim.accept("c", t) for t in (100 * s, 100 * s + s // 10, 100 * s + 6 * s // 10)] == ["ok", "limited", "ok"]
    assert lim.accept("c", 10 * s) == "rewind" and lim.rewinds == 1      # went back 90 s: reset, accepted
    assert [lim.accept("c", t) for t in (10 * s + s // 10, 10 * s + 6 * s // 10)] == ["limited", "ok"]
    assert lim.accept("other", 10 * s) == "ok"                        # per key
    unlimited = StampRateLimiter(0.0)
    assert [unlimited.accept("c", t) for t in (5, 5, 6, 4)] == ["ok", "ok", "ok", "rewind"]


def test_drop_counter_by_reason():
    from chorus_ros.ros.runtime import DropCounter
    d = DropCounter(("a", "b"))
    d.add("a")
    d.add("c", 3)
    d.set("b", 7)
    assert d.snapshot() == {"a": 1, "b": 7, "c": 3} and d.total() == 11 and d.get("zz") == 0


def test_pairer_counts_unpaired_messages_and_their_nearest_counterpart():
    from chorus_ros.ros.runtime import StampPairer
    p = StampPairer(tolerance_ns=0, buffer=3)
    assert p.add_a("c", 100, "pose") is None
    assert p.add_b("c", 101, "info") is None           # 1 ns apart: never paired
    assert p.add_a("c", 200, "pose2") is None
    assert p.add_b("c", 200, "info2") == ("pose2", "info2", 200)
    assert p.unpaired == {"a": 1, "b": 1} and p.last_gap_ns == 1
    for t in range(300, 305):                         # buffer overflow: the oldest fall out
        p.add_a("c", t, "x")
    assert p.unpaired == {"a": 3, "b": 1} and p.last_gap_ns is None
