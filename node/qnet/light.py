"""A light node: follows the chain's headers and checks their commit certificates against
the validator set, keeps no ledger state, and sends its heartbeat through the full or super
nodes it is attached to (DESIGN §5).

The validator set is fixed by genesis, so one certified header proves the chain's head: a
light node that was away takes the newest header its peers offer and checks it alone. A
header for the height right after its head must also extend it; one that does not, yet
carries a valid certificate, means the validators signed two chains, which is logged as
loudly as can be and refused.

What it keeps: the newest certified header and its certificate, in ``light_head`` (written
atomically), so a restart resumes there.
"""

import asyncio
import logging
import os
import struct
import time
from collections import deque

from . import __version__, crypto, ledger
from .bft import (
    _RANGE,
    KIND_BLOCKS,
    KIND_GET_HEADERS,
    KIND_GET_NODE,
    KIND_HEADERS,
    KIND_NODE,
    KIND_PING,
    KIND_PONG,
    KIND_STATUS,
    KIND_TXS,
    KINDS,
    STATUS_EVERY_S,
    PeerStats,
    decode_blocks,
    decode_headers,
    encode_status,
    policy_for,
)
from .block import BlockError, CommitCertificate, Header
from .config import NodeConfig
from .genesis import Genesis
from .metrics import Metrics
from .node import ARRIVALS_KEPT, HeartbeatView, InvalidBlock, status_document
from .p2p import PeerInfo, PeerNetwork
from .tx import encode_batch, make_heartbeat

log = logging.getLogger("qnet.light")

HEARTBEAT_RETRY_S = 10.0  # a heartbeat not seen on chain by then is sent again
_LEN = struct.Struct(">I")


class Fork(RuntimeError):
    """Two certified headers that cannot both be on one chain."""


class LightNode:
    def __init__(self, config: NodeConfig, genesis: Genesis, key: crypto.KeyPair):
        self.config = config
        self.genesis = genesis
        self.key = key
        self.chain_id = genesis.chain_id
        self.rules = ledger.Rules.from_genesis(genesis)
        self.powers = {v.public_key: v.power for v in genesis.validators}
        self.region = config.region
        self.region_rtt_ms: dict[str, float] | None = None  # measured by --region=auto
        self.metrics = Metrics(config.data_dir)
        self.started_at = time.time()
        self.head: Header | None = None  # None: genesis
        self.head_cert = b""
        self.arrivals: deque[tuple[int, int]] = deque(maxlen=ARRIVALS_KEPT)
        self._head_path = config.data_dir / "light_head"
        self._asked: dict[str, tuple[int, float]] = {}  # peer -> (height asked, when)
        self._heartbeat_sent: tuple[int, float] | None = None  # (epoch, when)
        self._heartbeat_on_chain: int | None = None
        self.net = PeerNetwork(
            key=key,
            chain_id=self.chain_id,
            genesis_hash=genesis.hash,
            node_type="light",
            region=config.region,
            listen_host=None,  # nobody dials a light node
            listen_port=0,
            seeds=config.peers,
            api_port=config.api_port,
            on_message=self._on_message,
            on_peer=self._on_peer,
            registry=self.metrics.registry,
            policy=policy_for("light", config.region, key.public_key, self.powers),
            app_kinds=KINDS,
        )
        self.metrics.build_info.info(
            {
                "version": __version__,
                "chain_id": self.chain_id,
                "node_id": key.node_id,
                "node_type": "light",
                "region": config.region,
            }
        )
        self.stats = PeerStats(self.net, self.metrics, self.chain_id, self.powers)
        self._load_head()

    # ---- the head ------------------------------------------------------------------------
    @property
    def height(self) -> int:
        return self.head.height if self.head else 0

    @property
    def head_hash(self) -> bytes:
        return self.head.hash if self.head else b"\0" * 32

    def _load_head(self) -> None:
        try:
            data = self._head_path.read_bytes()
        except FileNotFoundError:
            return
        try:
            (n,) = _LEN.unpack_from(data)
            header = Header.decode(data[_LEN.size : _LEN.size + n])
            cert = data[_LEN.size + n :]
            self.check(header, CommitCertificate.decode(cert))
        except (struct.error, BlockError, InvalidBlock) as exc:
            log.warning(
                "ignoring %s (%s): following the chain from its peers", self._head_path, exc
            )
            return
        self.head, self.head_cert = header, cert
        self.metrics.height.set(header.height)
        self.metrics.head_time.set(header.time_ms / 1000)
        log.info("resumed at height %d, block %s", header.height, header.hash.hex()[:16])

    def _save_head(self) -> None:
        encoded = self.head.encode()
        tmp = self._head_path.with_suffix(".tmp")
        tmp.write_bytes(_LEN.pack(len(encoded)) + encoded + self.head_cert)
        os.replace(tmp, self._head_path)

    def check(self, header: Header, cert: CommitCertificate) -> None:
        """A header is the chain's if validators with more than 2/3 of the power precommitted
        exactly it; raises InvalidBlock otherwise."""
        if header.chain_id != self.chain_id:
            raise InvalidBlock(f"header {header.height} is for chain {header.chain_id!r}")
        if cert.block_hash != header.hash or cert.height != header.height:
            raise InvalidBlock(f"header {header.height}: certificate is for another block")
        try:
            cert.verify(self.chain_id, self.powers)
        except BlockError as exc:
            raise InvalidBlock(f"header {header.height}: {exc}") from None

    def accept(self, header: Header, cert: CommitCertificate) -> bool:
        """Take a certified header as the new head if it is newer; True if it was."""
        if header.height < self.height:
            return False
        if header.height == self.height:
            if header.hash != self.head_hash and self.head is not None:
                self.check(header, cert)
                raise Fork(f"two certified headers at height {header.height}")
            return False
        self.check(header, cert)
        if header.height == self.height + 1 and header.parent != self.head_hash:
            raise Fork(
                f"certified header {header.height} does not extend certified header {self.height}"
            )
        self.head, self.head_cert = header, cert.encode()
        self.arrivals.append((header.height, int(time.time() * 1000)))
        self._save_head()
        self.metrics.height.set(header.height)
        self.metrics.head_time.set(header.time_ms / 1000)
        self.metrics.blocks.inc()
        return True

    # ---- lifecycle -----------------------------------------------------------------------
    async def run(self) -> None:
        await self.net.start()
        try:
            while True:
                await asyncio.sleep(STATUS_EVERY_S)
                await self.net.broadcast(KIND_STATUS, self._status())
                await self._ask_for_heartbeat()
                for peer in self.net.peers():
                    await self.stats.ping(peer.node_id)
                self._update_lag()
        finally:
            await self.net.stop()

    def close(self) -> None:
        pass  # nothing held open between writes

    # ---- peers ---------------------------------------------------------------------------
    async def _on_peer(self, peer: PeerInfo, connected: bool) -> None:
        self.stats.changed(peer, connected)
        if not connected:
            self._asked.pop(peer.node_id, None)
            return
        await self.stats.ping(peer.node_id)
        await self.net.send(peer.node_id, KIND_STATUS, self._status())

    async def _on_message(self, peer: PeerInfo, kind: int, payload: bytes) -> None:
        try:
            await self._dispatch(peer, kind, payload)
        except (BlockError, struct.error) as exc:
            self.net.ban(peer.node_id, f"malformed kind {kind} message: {exc}")
        except InvalidBlock as exc:
            self.net.ban(peer.node_id, f"served an uncertified header: {exc}")
        except Fork as exc:
            log.critical("FORK: %s (served by %s); the validators signed two chains", exc, peer)
            self.net.ban(peer.node_id, str(exc), seconds=3600)

    async def _dispatch(self, peer: PeerInfo, kind: int, payload: bytes) -> None:
        if kind == KIND_STATUS:
            self.stats.on_status(peer, payload, self.height)  # above ours: certified
            self._update_lag()
            await self._catch_up(peer, self.stats.heights[peer.node_id])
        elif kind in (KIND_HEADERS, KIND_BLOCKS):
            if kind == KIND_HEADERS:
                items = decode_headers(payload)
            else:
                items = [(b.header, c) for b, c in decode_blocks(payload)]
            await self._take_headers(peer, items)
        elif kind == KIND_NODE:
            if payload[:32] == self.key.public_key:
                await self._on_node_view(peer, HeartbeatView.decode(payload[32:]))
        elif kind == KIND_PING:
            await self.stats.on_ping(peer, payload)
        elif kind == KIND_PONG:
            self.stats.on_pong(peer, payload)
        # Anything else (transactions, consensus, requests for blocks) is not for a node
        # that keeps no state; a full node does not send it to one.

    async def _catch_up(self, peer: PeerInfo, height: int) -> None:
        """Ask a peer that is ahead for its newest header; one question per peer at a time
        (pushed headers usually arrive first)."""
        if height <= self.height:
            return
        asked = self._asked.get(peer.node_id)
        now = time.monotonic()
        if asked is not None and asked[0] >= height and now - asked[1] < 2 * STATUS_EVERY_S:
            return
        self._asked[peer.node_id] = (height, now)
        await self.net.send(peer.node_id, KIND_GET_HEADERS, _RANGE.pack(height, height))

    async def _take_headers(self, peer: PeerInfo, items: list) -> None:
        moved = False
        for header, cert in items:
            if self.accept(header, cert):
                moved = True
                self.stats.saw(peer, header.height)  # its certificate verified
        if moved:
            await self.net.broadcast(KIND_STATUS, self._status())
            self._update_lag()

    def _status(self) -> bytes:
        return encode_status(self.height, self.head_cert)

    def _update_lag(self) -> None:
        self.metrics.sync_lag.set(self.network_status()["sync_lag_blocks"])

    # ---- heartbeats ----------------------------------------------------------------------
    def epoch_now(self) -> int:
        head_epoch = self.rules.epoch_of(self.head.time_ms) if self.head else 0
        return max(head_epoch, self.rules.epoch_of(int(time.time() * 1000)))

    async def _ask_for_heartbeat(self) -> None:
        """Once per epoch, ask an upstream peer what the chain knows of this node."""
        if self._heartbeat_on_chain == self.epoch_now():
            return
        upstream = [p for p in self.net.peers() if p.node_type != "light"]
        if upstream:
            await self.net.send(upstream[0].node_id, KIND_GET_NODE, self.key.public_key)

    async def _on_node_view(self, peer: PeerInfo, view: HeartbeatView) -> None:
        if view.activated and view.last_epoch == view.epoch:
            if self._heartbeat_on_chain != view.epoch:
                log.info("heartbeat for epoch %d is on chain", view.epoch)
            self._heartbeat_on_chain = view.epoch
            return
        epoch = view.due()
        if epoch is None:
            return  # not activated, or one is pending there
        sent = self._heartbeat_sent
        if sent is not None and sent[0] == epoch and time.monotonic() - sent[1] < HEARTBEAT_RETRY_S:
            return
        heartbeat = make_heartbeat(self.key, self.chain_id, view.nonce, epoch)
        self._heartbeat_sent = (epoch, time.monotonic())
        await self.net.send(peer.node_id, KIND_TXS, encode_batch([heartbeat]))
        log.info("heartbeat for epoch %d sent through %s", epoch, peer.node_id)

    # ---- what the API shows --------------------------------------------------------------
    def network_status(self) -> dict:
        return {
            "peers": len(self.net.peers()),
            "sync_lag_blocks": self.stats.lag(self.height),
            "consensus_round": 0,
        }

    def network_peers(self) -> list[dict]:
        return self.stats.rows()

    def status(self) -> dict:
        """As a full node's, with the head's state digest as its header commits to it
        (this node holds no state) and no mempool."""
        if self.head is None:
            genesis = ledger.genesis_state(self.genesis)
            head = (0, genesis.block_hash, self.genesis.genesis_time_ms, genesis.digest)
        else:
            h = self.head
            head = (h.height, h.hash, h.time_ms, h.state_digest)
        return status_document(self, head, 0, self.network_status())
