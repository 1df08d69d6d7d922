"""Following the chain during a run: when each height was first seen committed at one node,
and which of the plan's transactions (by key: stream and index) each block holds.

Plain blocking calls through ``qnet.client`` (under Locust, gevent makes them cooperative);
``poll`` is one step, the locustfile loops it.
"""

import time
from collections.abc import Callable, Hashable

from ..client import ApiError, Client


class CommitTracker:
    def __init__(
        self,
        client: Client,
        ids: dict[bytes, Hashable],
        t0: float,
        start_height: int,
        clock: Callable[[], float] = time.time,
    ):
        self.client = client
        self.ids = ids
        self.t0 = t0
        self.height = start_height  # every block up to here has been read
        self.clock = clock
        self.seen: dict[int, float] = {}  # height -> seconds from t0 when first seen
        self.commits: dict[Hashable, float] = {}  # transaction key -> seconds from t0
        self.polled = float("-inf")  # seconds from t0 of the last complete poll
        self.errors = 0

    def poll(self) -> list[tuple[Hashable, float]]:
        """Read the heights committed since the last poll; the plan's transactions in them,
        as (key, seconds from t0 when their block was first seen)."""
        try:
            head = self.client.status()["height"]
        except ApiError:
            self.errors += 1
            return []
        now = self.clock() - self.t0
        for h in range(self.height + 1, head + 1):
            self.seen.setdefault(h, now)
        new = []
        while self.height < head:
            try:
                block = self.client.block(self.height + 1)
            except ApiError:
                self.errors += 1
                return new
            self.height += 1
            seen = self.seen[self.height]
            for tx_id in block["transactions"]:
                i = self.ids.get(bytes.fromhex(tx_id))
                if i is not None and i not in self.commits:
                    self.commits[i] = seen
                    new.append((i, seen))
        self.polled = now
        return new
