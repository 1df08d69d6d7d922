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

Its heartbeat depends on what it cannot check itself: its record and nonce, which only a
node with state knows (``HeartbeatView``). So each round it asks two distinct upstream (full
or super) peers, drawn at random, and takes a view only as the answer to its own outstanding
question to that peer: a NODE message from a peer it did not ask, or a second one, gets that
peer banned like any unsolicited frame. A pair's answers it acts on only when neither peer
alone can have made them up: both views must be of the epoch its own clock and certified
head are in, and call for the same thing (send the heartbeat of that epoch with that nonce;
or nothing, as it is on chain or one is pending). If they differ it does nothing that round,
and one of the two, drawn (which lied cannot be told), rests from the draws for VIEW_REST_S;
a peer that does not answer in time rests too. So a liar cannot hold the heartbeat back for
good, even where a light node keeps only two upstreams: in half the disagreements the liar
rests, and the other is asked alone (a peer asked alone rests after it, and when all rest,
the one whose rest ends first is asked). A liar can delay a heartbeat, but never make this
node sign one for an epoch other than its own; asked alone, it can waste that round's
heartbeat with a wrong nonce (the chain refuses it), but its word that the heartbeat is on
chain does not end the epoch's rounds. With a single upstream, that peer's view is taken
alone, but only as the answer to its question.
"""

import asyncio
import logging
import os
import random
import struct
import time
from collections import deque
from dataclasses import dataclass, field

from . import __version__, crypto, ledger
from .block import BlockError, CommitCertificate, Header
from .config import NodeConfig
from .genesis import Genesis
from .metrics import Metrics
from .node import ARRIVALS_KEPT, InvalidBlock, status_document
from .p2p import PeerInfo, PeerNetwork
from .sync import STATUS_EVERY_S, PeerStats
from .topology import policy_for
from .tx import make_heartbeat
from .wire import (
    KIND_BLOCKS,
    KIND_GET_HEADERS,
    KIND_GET_NODE,
    KIND_HEADERS,
    KIND_NODE,
    KIND_PING,
    KIND_PONG,
    KIND_STATUS,
    KIND_TXS,
    Blocks,
    GetHeaders,
    GetNode,
    Headers,
    HeartbeatView,
    NodeView,
    Ping,
    Pong,
    ProtocolError,
    Status,
    Txs,
)

log = logging.getLogger("qnet.light")

HEARTBEAT_RETRY_S = 10.0  # a heartbeat not seen on chain by then is sent again
VIEW_PEERS = 2  # upstream peers asked for this node's HeartbeatView each round
VIEW_TIMEOUT_S = 5.0  # a round not fully answered by then is void; the next asks others
VIEW_REST_S = 30.0  # an upstream silent in a round, or drawn of a disagreeing pair, rests
_DRAW = random.SystemRandom()  # which upstreams a round asks: nothing a peer can predict
_LEN = struct.Struct(">I")


class Fork(RuntimeError):
    """Two certified headers that cannot both be on one chain."""


@dataclass
class ViewRound:
    """One round of questions for this node's HeartbeatView: the peers asked, their answers
    (None until given) and the deadline; ``alone`` if one peer was asked while others rest
    (its word that the heartbeat is on chain then does not end the epoch's rounds)."""

    deadline: float
    answers: dict[str, HeartbeatView | None] = field(default_factory=dict)
    alone: bool = False

    def complete(self) -> bool:
        return all(view is not None for view in self.answers.values())


class LightNode:
    def __init__(self, config: NodeConfig, genesis: Genesis, key: crypto.KeyPair):
        self.config = config
        self.genesis = genesis
        self.key = key
        self.chain_id = genesis.chain_id
        self.network = genesis.network  # what certificates and its heartbeats are bound to
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
        self._heartbeat_sent: tuple[int, int, float] | None = None  # (epoch, nonce, when)
        # GET_NODE questions awaiting an answer (connected peer -> how many; one a round at
        # most, answered in order) and the current round.
        self._view_asked: dict[str, int] = {}
        self._view_round: ViewRound | None = None
        self._rested: dict[str, float] = {}  # upstream -> until when it is not asked
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
        self.stats = PeerStats(self.net, self.metrics, self.network, self.powers)
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
            cert.verify(self.network, self.powers)
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
            for asked in (self._asked, self._view_asked):
                asked.pop(peer.node_id, None)
            return
        await self.stats.ping(peer.node_id)
        await self.net.send(peer.node_id, KIND_STATUS, self._status())

    async def _on_message(self, peer: PeerInfo, kind: int, payload: bytes) -> None:
        try:
            await self._dispatch(peer, kind, payload)
        except (BlockError, ProtocolError) as exc:
            self.net.ban(peer.node_id, f"malformed kind {kind} message: {exc}")
        except InvalidBlock as exc:
            self.net.ban(peer.node_id, f"served an uncertified header: {exc}")
        except Fork as exc:
            log.critical("FORK: %s (served by %s); the validators signed two chains", exc, peer)
            self.net.ban(peer.node_id, str(exc), seconds=3600)

    async def _dispatch(self, peer: PeerInfo, kind: int, payload: bytes) -> None:
        if kind == KIND_STATUS:
            self.stats.on_status(peer, Status.decode(payload), self.height)  # above ours: certified
            self._update_lag()
            await self._catch_up(peer, self.stats.heights[peer.node_id])
        elif kind in (KIND_HEADERS, KIND_BLOCKS):
            if kind == KIND_HEADERS:
                items = Headers.decode(payload).headers()
            else:
                items = [(b.header, c) for b, c in Blocks.decode(payload).blocks()]
            await self._take_headers(peer, items)
        elif kind == KIND_NODE:
            await self._on_node(peer, NodeView.decode(payload))
        elif kind == KIND_PING:
            await self.stats.on_ping(peer, Ping.decode(payload))
        elif kind == KIND_PONG:
            self.stats.on_pong(peer, Pong.decode(payload))
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
        await self.net.send(peer.node_id, KIND_GET_HEADERS, GetHeaders(height, height).encode())

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
        return Status(self.height, self.head_cert).encode()

    def _update_lag(self) -> None:
        self.metrics.sync_lag.set(self.network_status()["sync_lag_blocks"])

    # ---- heartbeats ----------------------------------------------------------------------
    def epoch_now(self) -> int:
        head_epoch = self.rules.epoch_of(self.head.time_ms) if self.head else 0
        return max(head_epoch, self.rules.epoch_of(int(time.time() * 1000)))

    async def _ask_for_heartbeat(self) -> None:
        """Once per epoch, ask VIEW_PEERS upstream peers (or the one there is) what the chain
        knows of this node, unless the round before still waits for answers within its
        deadline."""
        if self._heartbeat_on_chain == self.epoch_now():
            return
        now = time.monotonic()
        current = self._view_round
        if current is not None and not current.complete():
            if now < current.deadline:
                return
            for node_id, view in current.answers.items():  # void: the silent ones rest
                if view is None:
                    self._rest(node_id, now, "did not answer in time")
        upstream = [p for p in self.net.peers() if p.node_type != "light"]
        awake = [p for p in upstream if self._rested.get(p.node_id, 0.0) <= now]
        if not awake and upstream:  # all rest: the one whose rest ends first, alone
            awake = [min(upstream, key=lambda p: self._rested[p.node_id])]
        chosen = _DRAW.sample(awake, min(VIEW_PEERS, len(awake)))
        self._view_round = ViewRound(
            now + VIEW_TIMEOUT_S,
            {p.node_id: None for p in chosen},
            alone=len(chosen) < min(VIEW_PEERS, len(upstream)),
        )
        for peer in chosen:
            self._view_asked[peer.node_id] = self._view_asked.get(peer.node_id, 0) + 1
            await self.net.send(peer.node_id, KIND_GET_NODE, GetNode(self.key.public_key).encode())

    def _rest(self, node_id: str, now: float, why: str) -> None:
        """Leave ``node_id`` out of the next rounds' draws for VIEW_REST_S (when every upstream
        rests, the one whose rest ends first is asked alone)."""
        log.info("upstream %s %s: not asked for %g s", node_id, why, VIEW_REST_S)
        self._rested[node_id] = now + VIEW_REST_S
        for gone in [k for k, until in self._rested.items() if until <= now]:
            del self._rested[gone]

    async def _on_node(self, peer: PeerInfo, answer: NodeView) -> None:
        """A NODE message: taken only as the answer to our outstanding GET_NODE to that peer,
        about this node; anything else gets the peer banned."""
        outstanding = self._view_asked.pop(peer.node_id, 0)
        if not outstanding:
            self.net.ban(peer.node_id, "sent a NODE view it was not asked for")
            return
        if outstanding > 1:
            self._view_asked[peer.node_id] = outstanding - 1
        if answer.public_key != self.key.public_key:
            self.net.ban(peer.node_id, "answered GET_NODE with another node's view")
            return
        view = answer.view
        current = self._view_round
        if current is None or current.answers.get(peer.node_id, view) is not None:
            log.debug("late view from %s (asked in a round that is over)", peer.node_id)
            return
        if time.monotonic() >= current.deadline:
            log.debug("late view from %s (after the round's deadline)", peer.node_id)
            return
        current.answers[peer.node_id] = view
        if current.complete():
            await self._on_views(current)

    def _verdict(self, view: HeartbeatView) -> tuple | None:
        """What a view calls for: ("on_chain", epoch), ("send", epoch, nonce), ("wait",);
        None if it cannot be right: of another epoch than ours, or a heartbeat after it."""
        epoch = self.epoch_now()
        if view.epoch != epoch or (view.last_epoch is not None and view.last_epoch > epoch):
            return None
        if view.activated and view.last_epoch == view.epoch:
            return ("on_chain", epoch)
        due = view.due()
        return ("wait",) if due is None else ("send", due, view.nonce)

    async def _on_views(self, answered: ViewRound) -> None:
        """Act on a fully answered round only if every view calls for the same (see the
        module docstring)."""
        if answered.alone:  # asked while the others rest: it rests in turn, whatever it says
            (node_id,) = answered.answers
            self._rest(node_id, time.monotonic(), "was asked alone")
        verdicts = {self._verdict(view) for view in answered.answers.values()}
        if len(verdicts) != 1 or None in verdicts:
            log.info(
                "upstream peers %s disagree on this node's record (%s): asking others",
                sorted(answered.answers),
                sorted(map(str, verdicts)),
            )
            if not answered.alone:  # which one lied cannot be told: one, drawn, rests
                rested = _DRAW.choice(sorted(answered.answers))
                self._rest(rested, time.monotonic(), "disagreed with another upstream")
            return
        (verdict,) = verdicts
        if verdict[0] == "on_chain":
            if answered.alone:  # one peer's word, the others resting: asked again
                return
            if self._heartbeat_on_chain != verdict[1]:
                log.info("heartbeat for epoch %d is on chain", verdict[1])
            self._heartbeat_on_chain = verdict[1]
            return
        if verdict[0] != "send":
            return  # not activated, or one is pending there
        _, epoch, nonce = verdict
        sent = self._heartbeat_sent
        if (
            sent is not None
            and sent[:2] == (epoch, nonce)
            and time.monotonic() - sent[2] < HEARTBEAT_RETRY_S
        ):
            return
        heartbeat = make_heartbeat(self.key, self.network, nonce, epoch)
        self._heartbeat_sent = (epoch, nonce, time.monotonic())
        frame = Txs.of([heartbeat]).encode()
        for node_id in answered.answers:
            await self.net.send(node_id, KIND_TXS, frame)
        log.info("heartbeat for epoch %d sent through %s", epoch, ", ".join(answered.answers))

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
