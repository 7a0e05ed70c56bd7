"""Bounded drop-oldest queues and an approximate-time synchroniser (no ROS imports).

message_filters is not installable on machines without a ROS distro, and the nodes need the same behaviour
everywhere, so the fusion node pairs color/depth/camera_info with this small synchroniser. Callbacks only push
into these structures; timers drain them (the house rule: callbacks convert and enqueue, timers work).
"""
from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Any, Hashable, Iterable


class BoundedQueue:
    """Thread-safe FIFO of at most ``maxlen`` items that drops the OLDEST item when full.

    Dropping the oldest keeps a live robot working on the freshest data when processing falls behind.
    Counters (``pushed``, ``popped``, ``dropped``) are cumulative so a node can log them periodically.
    """

    def __init__(self, maxlen: int, name: str = "queue") -> None:
        if not isinstance(maxlen, int) or isinstance(maxlen, bool) or maxlen < 1:
            raise ValueError(f"BoundedQueue '{name}': maxlen must be an int >= 1, got {maxlen!r}")
        self.name = name
        self.maxlen = maxlen
        self._items: deque = deque()
        self._lock = threading.Lock()
        self.pushed = 0
        self.popped = 0
        self.dropped = 0

    def push(self, item: Any) -> Any | None:
        """Append ``item``; return the dropped oldest item if the queue was full, else None."""
        with self._lock:
            dropped = None
            if len(self._items) >= self.maxlen:
                dropped = self._items.popleft()
                self.dropped += 1
            self._items.append(item)
            self.pushed += 1
            return dropped

    def pop(self) -> Any | None:
        """Remove and return the oldest item, or None when empty."""
        with self._lock:
            if not self._items:
                return None
            self.popped += 1
            return self._items.popleft()

    def peek(self) -> Any | None:
        with self._lock:
            return self._items[0] if self._items else None

    def pop_latest(self) -> Any | None:
        """Take the newest item and discard the rest (counted as dropped): for consumers that only want fresh data."""
        with self._lock:
            if not self._items:
                return None
            item = self._items.pop()
            self.dropped += len(self._items)
            self._items.clear()
            self.popped += 1
            return item

    def drop_oldest(self) -> Any | None:
        """Discard the oldest item, counting it as dropped (e.g. a frame whose pose never arrived)."""
        with self._lock:
            if not self._items:
                return None
            self.dropped += 1
            return self._items.popleft()

    def clear(self) -> None:
        with self._lock:
            self.dropped += len(self._items)
            self._items.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def counters(self) -> dict[str, int]:
        with self._lock:
            return {"pushed": self.pushed, "popped": self.popped, "dropped": self.dropped,
                    "queued": len(self._items)}


@dataclass(frozen=True)
class Stamped:
    stamp: float  # seconds
    item: Any


class ApproximateTimeSync:
    """Pair the latest items of several streams whose stamps lie within ``slop`` seconds of each other.

    ``add(key, stamp, item)`` returns a dict ``{key: item}`` for every stream once a matching set exists, else
    None. Matching uses the item just added as the pivot and takes, per other stream, the item nearest in time;
    the set is accepted when its stamps span at most ``slop``. Everything older than the matched items is then
    discarded and counted in ``unmatched`` (frames that could never pair: e.g. camera_info missing). Each stream
    keeps at most ``queue_size`` items (drop oldest), so a silent stream cannot grow memory.
    """

    def __init__(self, keys: Iterable[Hashable], slop: float, queue_size: int = 10) -> None:
        self.keys = tuple(keys)
        if len(self.keys) < 2 or len(set(self.keys)) != len(self.keys):
            raise ValueError(f"ApproximateTimeSync: need >= 2 distinct stream keys, got {self.keys}")
        if not slop >= 0.0:
            raise ValueError(f"ApproximateTimeSync: slop must be >= 0 seconds, got {slop}")
        self.slop = float(slop)
        self.queues = {k: BoundedQueue(queue_size, name=str(k)) for k in self.keys}
        self._lock = threading.Lock()
        self.matched = 0
        self.unmatched = 0
        self.last_seen: dict[Hashable, float | None] = {k: None for k in self.keys}

    def add(self, key: Hashable, stamp: float, item: Any) -> dict | None:
        if key not in self.queues:
            raise KeyError(f"ApproximateTimeSync: unknown stream {key!r}; streams are {self.keys}")
        with self._lock:
            self.last_seen[key] = float(stamp)
            self.queues[key].push(Stamped(float(stamp), item))
            return self._try_match(key, float(stamp))

    def _try_match(self, pivot_key: Hashable, pivot_stamp: float) -> dict | None:
        chosen: dict[Hashable, Stamped] = {}
        for key in self.keys:
            items = list(self.queues[key]._items)  # snapshot under our own lock; the queue lock is uncontended
            if not items:
                return None
            if key == pivot_key:
                chosen[key] = items[-1]
                continue
            chosen[key] = min(items, key=lambda s: abs(s.stamp - pivot_stamp))
        stamps = [s.stamp for s in chosen.values()]
        if max(stamps) - min(stamps) > self.slop:
            return None
        # Consume the matched items and everything older: older ones can only pair with data we already passed.
        for key, match in chosen.items():
            queue = self.queues[key]
            while True:
                head = queue.peek()
                if head is None or head.stamp > match.stamp:
                    break
                if head is match:
                    queue.pop()
                    break
                queue.pop()
                self.unmatched += 1
        self.matched += 1
        return {key: s.item for key, s in chosen.items()}

    def counters(self) -> dict[str, int]:
        with self._lock:
            out = {"matched": self.matched, "unmatched": self.unmatched}
            for key, queue in self.queues.items():
                out[f"dropped_{key}"] = queue.dropped
            return out

    def missing_streams(self) -> list[Hashable]:
        """Streams that have never delivered anything (to name them in a warning)."""
        return [k for k, v in self.last_seen.items() if v is None]

    def starved_streams(self) -> list[Hashable]:
        """Streams with nothing queued while another stream's queue is full: the silent one blocks every match
        (e.g. camera_info stopped), and the full queues are now dropping data."""
        with self._lock:
            empty = [k for k, q in self.queues.items() if len(q) == 0]
            full = any(len(q) >= q.maxlen for q in self.queues.values())
            return empty if (empty and full) else []

    def reset(self) -> None:
        with self._lock:
            for queue in self.queues.values():
                queue.clear()
