"""Prometheus HTTP service discovery: the nodes a monitoring host should scrape, as this node
knows them (``GET /api/v1/network/sd``).

A node is listed when it is
- a connected peer, authenticated by the handshake; its address is the one it connected
  from, paired with the API port its HELLO announced, never an address it names;
- activated on chain; its type and region are the chain's record, not what it announces;
- answering: ``GET /api/v1/status`` at that address gave its own node id within
  ``timeout_s``. Each address is probed at most once per ``ttl_s``, however often the
  document is asked for, at most ``concurrency`` probes at a time, and the probe reads at
  most ``MAX_STATUS_BYTES``: a stranger can make this node send one small GET to the host it
  connected from every ``ttl_s``, and nothing else.

Each target group carries ``__meta_qnet_node_id``, ``__meta_qnet_node_type`` and
``__meta_qnet_region``; the prometheus role relabels them to ``instance``, ``node_type`` and
``region``, the labels of the targets it takes from the inventory.

Only peers are listed: Prometheus asks every super node of its inventory, and the union is
what it scrapes. A validator keeps at most 16 full and 4 light peers (topology.py), so a
larger community is found through relay super nodes (non-validators), listed in the
inventory's ``full`` or ``genesis`` groups as SD sources.
"""

import asyncio
import contextlib
import json
import time
from collections.abc import Callable

import aiohttp

from .p2p import PeerInfo

MAX_STATUS_BYTES = 64 * 1024


class ScrapeTargets:
    def __init__(
        self,
        peers: Callable[[], list[PeerInfo]],
        record: Callable[[bytes], object | None],
        ttl_s: float = 30.0,
        timeout_s: float = 2.0,
        concurrency: int = 8,
    ):
        """``peers``: the connected peers; ``record``: the chain's record of an activated
        node by public key (with ``node_type`` and ``region``), None for any other."""
        self._peers = peers
        self._record = record
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self._slots = asyncio.Semaphore(concurrency)
        # (node id, api address) -> (monotonic time of the probe, whether it answered)
        self._probed: dict[tuple[str, str], tuple[float, bool]] = {}
        self._probing: dict[tuple[str, str], asyncio.Task] = {}
        self._session: aiohttp.ClientSession | None = None

    async def document(self) -> list[dict]:
        """The target groups, one per listed node, sorted by node id."""
        candidates = []
        for peer in self._peers():
            record = self._record(peer.public_key) if peer.api else None
            if record is not None:
                candidates.append((peer, record))
        keys = {(peer.node_id, peer.api) for peer, _ in candidates}
        for gone in self._probed.keys() - keys:  # bounded by the peers we have now
            del self._probed[gone]
        answered = await asyncio.gather(*(self._answers(peer) for peer, _ in candidates))
        groups = [
            {
                "targets": [peer.api],
                "labels": {
                    "__meta_qnet_node_id": peer.node_id,
                    "__meta_qnet_node_type": record.node_type,
                    "__meta_qnet_region": record.region,
                },
            }
            for (peer, record), ok in zip(candidates, answered, strict=True)
            if ok
        ]
        return sorted(groups, key=lambda g: g["labels"]["__meta_qnet_node_id"])

    async def _answers(self, peer: PeerInfo) -> bool:
        key = (peer.node_id, peer.api)
        seen = self._probed.get(key)
        if seen is not None and time.monotonic() - seen[0] < self.ttl_s:
            return seen[1]
        task = self._probing.get(key)
        if task is None:
            task = self._probing[key] = asyncio.create_task(self._probe(peer, key))
        return await asyncio.shield(task)  # one cancelled request does not end the probe

    async def _probe(self, peer: PeerInfo, key: tuple[str, str]) -> bool:
        try:
            async with self._slots:
                ok = await self._status_names(peer)
            self._probed[key] = (time.monotonic(), ok)
            return ok
        finally:
            del self._probing[key]

    async def _status_names(self, peer: PeerInfo) -> bool:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        url = f"http://{peer.api}/api/v1/status"
        try:
            async with (
                asyncio.timeout(self.timeout_s),
                self._session.get(url, allow_redirects=False) as response,
            ):
                if response.status != 200:
                    return False
                body = await response.content.read(MAX_STATUS_BYTES + 1)
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False
        if len(body) > MAX_STATUS_BYTES:
            return False
        try:
            status = json.loads(body)
        except ValueError:
            return False
        return isinstance(status, dict) and status.get("node_id") == peer.node_id

    async def close(self) -> None:
        for task in list(self._probing.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._session is not None:
            await self._session.close()
