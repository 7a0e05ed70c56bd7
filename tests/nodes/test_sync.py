"""Bounded drop-oldest queues and the approximate-time synchroniser (pure Python, no graph)."""
import pytest

from ov3d_ros.nodes.sync import ApproximateTimeSync, BoundedQueue


def test_bounded_queue_drops_oldest_and_counts():
    q = BoundedQueue(3, name="frames")
    dropped = [q.push(i) for i in range(5)]
    assert dropped == [None, None, None, 0, 1]
    assert [q.pop() for _ in range(4)] == [2, 3, 4, None]
    assert q.counters() == {"pushed": 5, "popped": 3, "dropped": 2, "queued": 0}
    for i in range(3):
        q.push(i)
    assert q.pop_latest() == 2 and len(q) == 0 and q.dropped == 4
    with pytest.raises(ValueError, match="maxlen must be an int >= 1"):
        BoundedQueue(0)


def test_sync_pairs_jittered_streams_within_slop():
    sync = ApproximateTimeSync(("color", "depth", "info"), slop=0.01, queue_size=5)
    matches = []
    for i in range(10):
        t = i / 30.0
        # Arrival order varies and stamps jitter by a few ms, as with real drivers.
        for key, jitter in (("depth", 0.003), ("info", 0.0), ("color", -0.002)):
            m = sync.add(key, t + jitter, (key, i))
            if m is not None:
                matches.append(m)
    assert [m["color"] for m in matches] == [("color", i) for i in range(10)]
    assert all(m["depth"][1] == m["info"][1] == m["color"][1] for m in matches)
    assert sync.counters()["matched"] == 10 and sync.counters()["unmatched"] == 0


def test_sync_rejects_sets_outside_slop_and_discards_stale_items():
    sync = ApproximateTimeSync(("a", "b"), slop=0.01, queue_size=10)
    assert sync.add("a", 1.00, "a1") is None
    assert sync.add("b", 1.05, "b1") is None  # 50 ms apart: no pair
    assert sync.add("a", 1.051, "a2") == {"a": "a2", "b": "b1"}
    assert sync.counters()["unmatched"] == 1  # a1 can never pair any more and was discarded
    assert sync.missing_streams() == []


def test_silent_stream_is_named_and_queues_stay_bounded():
    sync = ApproximateTimeSync(("color", "depth", "info"), slop=0.01, queue_size=4)
    for i in range(20):
        assert sync.add("color", i * 0.1, i) is None
        assert sync.add("depth", i * 0.1, i) is None
    assert sync.missing_streams() == ["info"] and sync.starved_streams() == ["info"]
    counters = sync.counters()
    assert counters["dropped_color"] == 16 and counters["dropped_depth"] == 16
    assert all(len(q) == 4 for k, q in sync.queues.items() if k != "info")
    with pytest.raises(KeyError, match="unknown stream"):
        sync.add("pose", 0.0, None)
