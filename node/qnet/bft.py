"""The network driver of a validator: Tendermint core + peer network, with block sync
(``sync.py``) and transaction gossip (``gossip.py``) beside it.

The core (``tendermint.Core``) decides; this driver does its I/O. Every input to the core
(a peer's message, a timeout, a built or validated block, a synced block) is handled by one
task, in order, so the core, the committed state and the signing state never race. Slow
work (building a block, verifying a proposal's signatures) runs in tasks of its own and
comes back as an input.

A node whose key is not in the validator set (a full node, or a super node acting as a
relay) runs the same driver without a core: it follows the chain by the committed blocks its
peers push and by sync, and serves the light nodes attached to it.

Gossip follows the hierarchy (DESIGN §5, ``topology.py``): consensus messages stay among
validators; committed blocks flow down to followers that are behind (headers only to light
nodes); transactions flow up, towards the validators.

The peer message kinds and their codecs are in ``wire.py``: CONSENSUS only between
validators; TXS up the hierarchy; STATUS on connect, after every commit and periodically;
GET_BLOCKS answered by BLOCKS, which also pushes a committed block to a follower; PING
answered by PONG (the round trip shown by ``network peers``); GET_HEADERS answered by
HEADERS, for light nodes, as GET_NODE is by NODE.

Registration is open, so every peer is a stranger until checked (DESIGN §5). What a peer
sends is checked before it is stored, logged, relayed or counted:
- Consensus messages are taken only from validator links (the peer's handshake key is in
  the genesis validator set): followers do not vote, and validators form a mesh, so no
  honest node ever needs a non-validator to carry a consensus message; a non-validator link
  that sends one is banned. A proposal whose block exceeds the genesis limits (transactions,
  and the bytes those can take) is refused and its link banned. Then the core checks sender
  membership, the height and round window and the signature; only a message it answers with
  ``Accepted`` is kept, written to consensus.wal, relayed, re-sent and counted in metrics,
  and what it later reports ``Forgotten`` is dropped again (consensus.wal is rewritten once
  it holds more forgotten messages than live ones). A refusal that an honest validator link
  never causes (``LINK_FAULTS``: it relays and re-sends only what its own core accepted)
  bans the link.
- What peers send waits for the driver in ``DriverInputs``, bounded per peer and in all.
- STATUS and BLOCKS are sync's (``sync.py``: certified heights, one request at a time,
  strikes and bans); the blocks it takes are applied here, in the driver's turn.
- Transactions are checked and relayed by ``gossip.py``.
A disk error does not stop the driver: a signing state that cannot be saved withholds the
messages it covers (never a vote that could be signed differently after a crash), and a
consensus.wal that refuses writes costs only liveness after a crash, as a torn tail does.
(The files themselves: ``consensus_store.py``.)
"""

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable

from . import crypto, tendermint
from .block import Block, BlockError, CommitCertificate
from .config import NodeConfig
from .consensus_store import ConsensusLog, SigningStateFile
from .gossip import TxGossip
from .journal import JournalError
from .node import InvalidBlock, Node
from .p2p import PROTOCOL_BAN_S, PeerInfo, PeerNetwork
from .sync import STATUS_EVERY_S, BlockSync, PeerStats
from .topology import policy_for
from .wire import (
    KIND_BLOCKS,
    KIND_CONSENSUS,
    KIND_GET_BLOCKS,
    KIND_GET_HEADERS,
    KIND_GET_NODE,
    KIND_HEADERS,
    KIND_NODE,
    KIND_PING,
    KIND_PONG,
    KIND_STATUS,
    KIND_TXS,
    Blocks,
    Consensus,
    GetBlocks,
    GetHeaders,
    GetNode,
    Headers,
    NodeView,
    Ping,
    Pong,
    ProtocolError,
    Status,
    check_block_size,
)

log = logging.getLogger("qnet.bft")

MAX_FUTURE_MS = 10_000  # a proposed block may not be dated further ahead than this
WAL_COMPACT_MIN = 1_000  # forgotten messages in consensus.wal before it may be rewritten
PEER_INPUTS = 1_000  # consensus messages and BLOCKS of one peer waiting for the driver
PEER_INPUT_BYTES = 32 * 2**20  # and their bytes (one maximal proposal fits)
INPUT_BYTES = 128 * 2**20  # the bytes of all peers' waiting inputs together
# Refusals of the core that an honest validator link never causes: it relays and re-sends
# only messages its own core accepted, under the same genesis.
LINK_FAULTS = frozenset(
    {"wrong_chain", "not_validator", "not_proposer", "bad_signature", "malformed_value"}
)


def value_id(value: bytes) -> bytes:
    """The id of an encoded block is its header hash (see ``Block.encode``)."""
    try:
        return Block.decode_header(value).hash
    except BlockError:
        return crypto.digest(value)  # not a block: an id that no valid block can have


Handler = Callable[[], Awaitable[None]]


class DriverInputs:
    """The driver's inputs, handled one at a time in order.

    Its own inputs (timeouts, built and checked values) always get in: the core makes a
    handful per step. What peers send (consensus messages, blocks) is bounded per peer, in
    messages and bytes, and in bytes for all peers together: a peer over its budget has its
    messages dropped (consensus messages are re-sent when a round stalls, blocks are asked
    for again), so a flooding link costs no more memory than its budget and cannot crowd
    out the others. Each drop is counted; the first of a burst is logged.
    """

    def __init__(self, metrics, per_peer: int, per_peer_bytes: int, total_bytes: int):
        self.metrics = metrics
        self.per_peer = per_peer
        self.per_peer_bytes = per_peer_bytes
        self.total_bytes = total_bytes
        self._queue: asyncio.Queue[tuple[Handler, str | None, int]] = asyncio.Queue()
        self._items: Counter[str] = Counter()  # peer -> its inputs waiting
        self._bytes: Counter[str] = Counter()
        self._total = 0
        self._dropping: set[str] = set()  # peers whose current burst of drops was logged

    def put(self, handler: Handler) -> None:
        self._queue.put_nowait((handler, None, 0))

    def offer(self, peer_id: str, size: int, handler: Handler) -> bool:
        if (
            self._items[peer_id] >= self.per_peer
            or self._bytes[peer_id] + size > self.per_peer_bytes
            or self._total + size > self.total_bytes
        ):
            self.metrics.consensus_dropped.labels("queue_full").inc()
            if peer_id not in self._dropping:
                self._dropping.add(peer_id)
                log.warning(
                    "dropping messages from %s: %d of its inputs (%d bytes) wait, %d bytes "
                    "from all peers",
                    peer_id,
                    self._items[peer_id],
                    self._bytes[peer_id],
                    self._total,
                )
            return False
        self._items[peer_id] += 1
        self._bytes[peer_id] += size
        self._total += size
        self._queue.put_nowait((handler, peer_id, size))
        return True

    async def get(self) -> Handler:
        handler, peer_id, size = await self._queue.get()
        if peer_id is not None:
            self._items[peer_id] -= 1
            self._bytes[peer_id] -= size
            self._total -= size
            if not self._items[peer_id]:
                del self._items[peer_id], self._bytes[peer_id]
                self._dropping.discard(peer_id)
        return handler


class BftConsensus:
    def __init__(self, node: Node, config: NodeConfig):
        self.node = node
        self.config = config
        self.metrics = node.metrics
        self.validators = tendermint.ValidatorSet(node.validator_powers)
        self.is_validator = node.key.public_key in self.validators
        self.net = PeerNetwork(
            key=node.key,
            chain_id=node.chain_id,
            genesis_hash=node.genesis.hash,
            node_type=config.node_type,
            region=node.region,
            listen_host=config.p2p_host,
            listen_port=config.p2p_port,
            seeds=config.peers,
            api_port=config.api_port,
            on_message=self._on_message,
            on_peer=self._on_peer,
            registry=node.metrics.registry,
            policy=policy_for(
                config.node_type, node.region, node.key.public_key, self.validators.powers
            ),
            is_activated=self._is_activated,
        )
        self.signing_state = SigningStateFile(config.data_dir / "consensus.state")
        self.log = ConsensusLog(config.data_dir / "consensus.wal")
        self.core: tendermint.Core | None = None
        self._inputs = DriverInputs(self.metrics, PEER_INPUTS, PEER_INPUT_BYTES, INPUT_BYTES)
        # Zeroes from the start: every series exists before the first message, so none
        # appears later (what peers send never adds one).
        for reason in (*tendermint.REFUSALS, "queue_full"):
            self.metrics.consensus_dropped.labels(reason)
        for validator in self.validators.powers:
            self.metrics.equivocations.labels(crypto.encode_node_id(validator))
            for kind in tendermint.VoteKind:
                self.metrics.votes_received.labels(
                    crypto.encode_node_id(validator), kind.name.lower()
                )
        self._tasks: set[asyncio.Task] = set()
        self._timers: set[asyncio.TimerHandle] = set()
        # Blocks of this height built or checked here, with their diffs, by block hash.
        self._checked: dict[bytes, tuple[Block, object]] = {}
        # Consensus messages (own and accepted by the core) of the height in progress and the
        # next, by digest: re-sent when a round stalls and to peers that connect, logged for
        # restarts. The core's limits bound them per validator, height and round.
        self._messages: dict[int, dict[bytes, bytes]] = {}
        self._wal_failing = False  # consensus.wal refused a write; logged once until it heals
        self._wal_dead = 0  # messages in consensus.wal that the core has since forgotten
        # Links this driver banned whose connection has not ended yet: what they still had
        # in flight is dropped unread.
        self._cut: set[str] = set()
        self.stats = PeerStats(self.net, self.metrics, node.network, self.validators.powers)
        self.gossip = TxGossip(node, self.net, self.validators, self.is_validator, self._ban)
        self.sync = BlockSync(node, self.net, self.stats, self._spawn, self._ban)
        self._peer_heights = self.stats.heights
        self._head_certificate = b""  # of the committed head, for STATUS
        self._height = 0  # the height the core was last started at
        self._started_at = time.time()
        # A validator whose signing state is gone (data wiped, or restored from a snapshot)
        # may have signed votes it no longer knows of at the height in progress. If the
        # others can commit without it, it follows the chain until a block committed after
        # this start arrives, and only then votes, at heights it cannot have signed before.
        powers = self.validators.powers
        others = sum(p for k, p in powers.items() if k != node.key.public_key)
        self._holding = (
            self.is_validator
            and self.signing_state.loaded is None
            and node.state.height > 0
            and 3 * others > 2 * sum(powers.values())
        )

    # ---- lifecycle -----------------------------------------------------------------------
    async def run(self) -> None:
        node = self.node
        node.relay = self.gossip.queue
        node.network_status = self._network_status
        node.network_peers = self.stats.rows
        if node.state.height:
            stored = await asyncio.to_thread(node.storage.encoded_header, node.state.height)
            self._head_certificate = stored[1] if stored else b""
        await self.net.start()
        self._spawn(self._status_loop())
        self._spawn(self.gossip.flush_loop())
        if self.is_validator:
            self.core = self._make_core()
            if self._holding:
                log.warning(
                    "no signing state, chain at height %d: following the chain until a block "
                    "committed after this start, so as never to sign twice",
                    node.state.height,
                )
            else:
                self._enqueue(self._start_height)
        try:
            while True:
                handler = await self._inputs.get()
                await handler()
        finally:
            for timer in self._timers:
                timer.cancel()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            node.relay = None
            await self.gossip.hand_off()
            await self.net.stop()
            self.log.close()
            self.signing_state.close()

    def _make_core(self) -> tendermint.Core:
        config = self.config
        return tendermint.Core(
            network=self.node.network,
            validators=self.validators,
            me=self.node.key.public_key,
            sign=self.node.key.sign,
            verify=crypto.verify,
            value_id=value_id,
            timeouts=tendermint.Timeouts(
                propose_ms=config.timeout_propose_ms,
                propose_delta_ms=config.timeout_delta_ms,
                prevote_ms=config.timeout_vote_ms,
                prevote_delta_ms=config.timeout_delta_ms,
                precommit_ms=config.timeout_vote_ms,
                precommit_delta_ms=config.timeout_delta_ms,
            ),
            signing_state=self.signing_state.loaded,
        )

    def _network_status(self) -> dict:
        return {
            "peers": len(self.net.peers()),
            "sync_lag_blocks": self.stats.lag(self.node.state.height),
            "consensus_round": self.core.round if self.core is not None and self._height else 0,
        }

    async def _to_validators(self, kind: int, data: bytes, exclude: str | None = None) -> None:
        """Consensus traffic stays among validators: followers do not vote."""
        await self.net.broadcast(
            kind, data, exclude, only=lambda peer: peer.public_key in self.validators
        )

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("consensus task failed", exc_info=task.exception())

    def _enqueue(self, handler: Handler) -> None:
        self._inputs.put(handler)

    def _status(self) -> bytes:
        return Status(self.node.state.height, self._head_certificate).encode()

    # ---- the core's effects --------------------------------------------------------------
    async def _carry_out(
        self, effects: list, source: PeerInfo | None = None, data: bytes = b""
    ) -> None:
        """Carry out the core's effects in order. ``source`` and ``data`` are the peer and
        the wire bytes of the message given to on_message, if any (None: our own log)."""
        durable = True  # the last signing state is on disk: what it covers may leave
        for effect in effects:
            match effect:
                case tendermint.PersistSigningState(state=state):
                    # Off the event loop, but before the next effect (the signed message).
                    try:
                        await asyncio.to_thread(self.signing_state.save, state)
                        durable = True
                    except OSError as exc:
                        durable = False
                        log.error(
                            "cannot save the signing state (%s): what it covers at height %d "
                            "round %d is not sent",
                            exc,
                            state.height,
                            state.round,
                        )
                case tendermint.Broadcast(message=message):
                    if not durable:
                        # Never sign twice after a crash: a message whose signing state is
                        # not on disk never leaves (the core counts it as a lost message).
                        log.error(
                            "withholding our %s for height %d round %d",
                            type(message).__name__.lower(),
                            message.height,
                            message.round,
                        )
                        continue
                    encoded = message.encode()
                    self._remember(message.height, encoded)
                    await self._to_validators(KIND_CONSENSUS, encoded)
                    if isinstance(message, tendermint.Proposal):
                        self.metrics.proposals.labels("sent").inc()
                case tendermint.Accepted(message=message):
                    await self._accepted(message, data or message.encode(), source)
                case tendermint.Refused(message=message, reason=reason):
                    self._refused(message, reason, source)
                case tendermint.Forgotten(messages=messages):
                    self._forget(messages)
                case tendermint.ScheduleTimeout(timeout=timeout, delay_ms=delay_ms):
                    self._schedule(timeout, delay_ms)
                case tendermint.RequestValue(height=height, round=round_):
                    self._spawn(self._build_value(height, round_))
                case tendermint.ValidateValue():
                    self._spawn(self._validate_value(effect))
                case tendermint.Decide():
                    await self._decide(effect)
                case tendermint.Equivocation(first=first):
                    offender = crypto.encode_node_id(tendermint.sender(first))
                    log.warning(
                        "validator %s equivocated at height %d round %d",
                        offender,
                        first.height,
                        first.round,
                    )
                    self.metrics.equivocations.labels(offender).inc()

    async def _accepted(
        self, message: tendermint.Message, data: bytes, source: PeerInfo | None
    ) -> None:
        """The core kept a message: only now is it logged, relayed and counted."""
        new = self._remember(message.height, data)
        if source is None:
            return  # replayed from our own log
        if isinstance(message, tendermint.Proposal):
            self.metrics.proposals.labels("received").inc()
            return
        validator = crypto.encode_node_id(message.validator)
        self.metrics.votes_received.labels(validator, message.kind.name.lower()).inc()
        if new and message.height == self._height:
            # Relay votes: with an equivocating validator, or a validator some others cannot
            # reach, correct ones still need to see every vote (blocks are not relayed here,
            # only re-sent when a round stalls).
            await self._to_validators(KIND_CONSENSUS, data, exclude=source.node_id)

    def _refused(self, message: tendermint.Message, reason: str, source: PeerInfo | None) -> None:
        if source is None:
            return  # replayed from our own log: what the core already has
        self.metrics.consensus_dropped.labels(reason).inc()
        signer = crypto.encode_node_id(tendermint.sender(message))
        if reason in LINK_FAULTS:
            self._ban(
                source.node_id,
                f"sent a {type(message).__name__.lower()} of height {message.height} round "
                f"{message.round} signed by {signer} that the core refused: {reason}",
            )
        else:
            log.debug(
                "ignored a %s of height %d round %d by %s from %s: %s",
                type(message).__name__.lower(),
                message.height,
                message.round,
                signer,
                source.node_id,
                reason,
            )

    def _schedule(self, timeout: tendermint.Timeout, delay_ms: int) -> None:
        loop = asyncio.get_running_loop()

        def fire() -> None:
            self._timers.discard(handle)
            self._enqueue(lambda: self._on_timeout(timeout))

        handle = loop.call_later(delay_ms / 1000, fire)
        self._timers.add(handle)

    async def _on_timeout(self, timeout: tendermint.Timeout) -> None:
        core = self.core
        if timeout.height == core.height and timeout.round == core.round:
            # Nothing moved for a whole timeout: peers may have missed messages while
            # disconnected (delivery is at most once), so send this height's again.
            for data in list(self._messages.get(core.height, {}).values()):
                await self._to_validators(KIND_CONSENSUS, data)
        await self._carry_out(core.on_timeout(timeout))
        self._note_round()

    def _note_round(self) -> None:
        self.metrics.consensus_height.set(self.core.height)
        self.metrics.consensus_round.set(self.core.round)

    async def _start_height(self) -> None:
        """Start the height after the committed head, then replay its logged messages."""
        height = self.node.state.height + 1
        core = self.core
        if height <= self._height:
            return
        self._height = height
        self._checked.clear()
        logged = []
        try:
            for data in self.log.read():
                with contextlib.suppress(tendermint.MessageError):
                    logged.append((tendermint.decode_message(data), data))
        except OSError as exc:
            self._wal_error("read", exc)
        self._messages = {h: m for h, m in self._messages.items() if h >= height}
        self._rewrite_log()  # what the core kept of this height before it started
        await self._carry_out(core.start_height(height))
        for message, data in logged:
            if message.height >= height:  # the core checks them again, as from a peer
                await self._carry_out(core.on_message(message), data=data)
        self._note_round()

    def _remember(self, height: int, data: bytes) -> bool:
        """Keep and log a message of this height or the next; False if already known."""
        if not self._height <= height <= self._height + 1:
            return False
        known = self._messages.setdefault(height, {})
        key = crypto.digest(data)
        if key in known:
            return False
        known[key] = data
        self._log_append(data)
        return True

    def _forget(self, messages: tuple[tendermint.Message, ...]) -> None:
        """Drop what the core evicted; rewrite consensus.wal once it holds more dead
        messages than live ones, so a validator flooding far rounds cannot grow it."""
        for message in messages:
            known = self._messages.get(message.height, {})
            if known.pop(crypto.digest(message.encode()), None) is not None:
                self._wal_dead += 1
        live = sum(len(known) for known in self._messages.values())
        if self._wal_dead > max(WAL_COMPACT_MIN, live):
            self._rewrite_log()

    def _rewrite_log(self) -> None:
        self._wal_dead = 0
        try:
            self.log.reset()
        except OSError as exc:
            self._wal_error("reset", exc)
        for known in self._messages.values():
            for data in known.values():
                self._log_append(data)

    def _log_append(self, data: bytes) -> None:
        """A message the log could not take costs only liveness after a crash (as a torn
        tail does): the node goes on with it in memory."""
        try:
            self.log.append(data)
        except OSError as exc:
            self._wal_error("append to", exc)
            return
        if self._wal_failing:
            self._wal_failing = False
            log.info("consensus.wal takes writes again")

    def _wal_error(self, what: str, exc: OSError) -> None:
        if not self._wal_failing:
            self._wal_failing = True
            log.error("cannot %s consensus.wal (%s): going on without it", what, exc)

    async def _build_value(self, height: int, round_: int) -> None:
        """Propose as soon as there is work, but not faster than the block interval and not
        later than the empty-block interval (an idle chain still shows it is alive)."""
        node = self.node
        params = node.params
        last = max(node.state.block_time_ms / 1000, self._started_at)
        earliest = last + params.block_interval_ms / 1000
        latest = last + self.config.empty_block_interval_ms / 1000
        while (now := time.time()) < latest and not (len(node.mempool) and now >= earliest):
            # Before the interval: sleep until it ends. After it: wait for work or the
            # empty-block deadline, whichever comes first.
            if now < earliest:
                await asyncio.sleep(earliest - now)
                continue
            node.work.clear()
            if len(node.mempool):
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(node.work.wait(), latest - now)
        if node.state.height != height - 1:
            return  # the height moved on while we waited
        node.expire_mempool()
        block, diff = node.build_block(int(time.time() * 1000))
        self._checked[block.hash] = (block, diff)
        value = block.encode()
        self._enqueue(lambda: self._carry_out(self.core.on_value(height, round_, value)))

    async def _validate_value(self, effect: tendermint.ValidateValue) -> None:
        valid = False
        try:
            block = Block.decode(effect.value)
            if block.header.time_ms > time.time() * 1000 + MAX_FUTURE_MS:
                raise InvalidBlock(f"block {block.header.height} is dated in the future")
            self._checked[block.hash] = (block, await self.node.validate_block(block))
            valid = True
        except (BlockError, InvalidBlock) as exc:
            log.warning("invalid proposal at height %d: %s", effect.height, exc)
            self.metrics.proposals.labels("invalid").inc()
        height, vid = effect.height, effect.value_id
        self._enqueue(lambda: self._carry_out(self.core.on_validity(height, vid, valid)))

    async def _decide(self, decision: tendermint.Decide) -> None:
        if decision.height <= self.node.state.height:  # sync got there first
            await self._start_height()
            return
        checked = self._checked.get(decision.certificate.block_hash)
        if checked is None:  # decided without our own check finishing: check it now
            block = Block.decode(decision.value)
            checked = (block, await self.node.validate_block(block))
        await self._commit(checked[0], decision.certificate, checked[1])
        self.metrics.rounds_per_height.observe(decision.round + 1)
        await self._start_height()

    async def _push_committed(
        self, block: Block, cert: CommitCertificate, exclude: str | None = None
    ) -> None:
        """Hand a committed block to peers that follow without voting (its header only, to
        light nodes); otherwise they learn of it only from a STATUS and then ask, which
        costs a round trip per hop."""
        height = block.header.height
        followers = [
            p
            for p in self.net.peers()
            if p.public_key not in self.validators
            and p.node_id != exclude
            and self._peer_heights.get(p.node_id, 0) < height
        ]
        if not followers:
            return
        cert_bytes = cert.encode()
        blocks = headers = b""
        for peer in followers:
            if peer.node_type == "light":
                headers = headers or Headers(((block.header.encode(), cert_bytes),)).encode()
                await self.net.send(peer.node_id, KIND_HEADERS, headers)
            else:
                blocks = blocks or Blocks(((block.encode(), cert_bytes),)).encode()
                await self.net.send(peer.node_id, KIND_BLOCKS, blocks)

    async def _commit(self, block: Block, cert: CommitCertificate, diff) -> None:
        await self.node.commit(block, cert, diff)
        self._head_certificate = cert.encode()
        await self._push_committed(block, cert)
        self.metrics.commit_latency.observe(max(0.0, time.time() - block.header.time_ms / 1000))
        await self.net.broadcast(KIND_STATUS, self._status())
        self._update_lag()

    # ---- peers ---------------------------------------------------------------------------
    async def _on_peer(self, peer: PeerInfo, connected: bool) -> None:
        self.stats.changed(peer, connected)
        if not connected:
            self.sync.forget(peer.node_id)
            self._cut.discard(peer.node_id)
            self._update_lag()
            return
        await self.stats.ping(peer.node_id)
        await self.net.send(peer.node_id, KIND_STATUS, self._status())
        if self.is_validator and peer.public_key in self.validators:
            for data in list(self._messages.get(self._height, {}).values()):
                await self.net.send(peer.node_id, KIND_CONSENSUS, data)  # what it missed

    def _is_activated(self, peer: PeerInfo) -> bool:
        """Whether the peer's key is activated on chain as the node type it claims (a paid
        identity: it may take a stranger's slot, see ``p2p``)."""
        record = self.node.state.node(peer.public_key)
        return record is not None and record.node_type == peer.node_type

    def _ban(self, node_id: str, reason: str, seconds: float = PROTOCOL_BAN_S) -> None:
        if any(p.node_id == node_id for p in self.net.peers()):
            self._cut.add(node_id)  # until its disconnection is reported
        self.net.ban(node_id, reason, seconds)

    async def _on_message(self, peer: PeerInfo, kind: int, payload: bytes) -> None:
        if peer.node_id in self._cut:
            return
        try:
            await self._dispatch(peer, kind, payload)
        except (BlockError, ProtocolError) as exc:
            self._ban(peer.node_id, f"malformed kind {kind} message: {exc}")

    async def _dispatch(self, peer: PeerInfo, kind: int, payload: bytes) -> None:
        if kind == KIND_CONSENSUS:
            self._on_consensus(peer, payload)
        elif kind == KIND_TXS:
            await self.gossip.on_txs(peer, payload)
        elif kind == KIND_STATUS:
            self.stats.on_status(peer, Status.decode(payload), self.node.state.height)
            self._update_lag()
            self.sync.maybe_sync()
        elif kind == KIND_GET_BLOCKS:
            request = GetBlocks.decode(payload)
            await self.sync.serve_blocks(peer, request.first, request.last)
        elif kind == KIND_PING:
            await self.stats.on_ping(peer, Ping.decode(payload))
        elif kind == KIND_PONG:
            self.stats.on_pong(peer, Pong.decode(payload))
        elif kind == KIND_BLOCKS:
            await self._on_blocks(peer, payload)
        elif kind == KIND_GET_HEADERS:
            request = GetHeaders.decode(payload)
            await self.sync.serve_headers(peer, request.first, request.last)
        elif kind == KIND_GET_NODE:
            key = GetNode.decode(payload).public_key
            answer = NodeView(key, self.node.heartbeat_view(key))
            await self.net.send(peer.node_id, KIND_NODE, answer.encode())
        elif kind in (KIND_HEADERS, KIND_NODE):
            pass  # answers meant for light nodes
        else:
            self._ban(peer.node_id, f"unknown message kind {kind}")

    def _on_consensus(self, peer: PeerInfo, payload: bytes) -> None:
        """Cheap checks first (the link, the encoding, a proposal's size); the core's checks
        run in the driver's turn, and only what it accepts is kept (see ``_accepted``)."""
        if peer.public_key not in self.validators:
            self._ban(peer.node_id, "sent a consensus message but is not a validator")
            return
        if self.core is None or self._holding:
            return  # not voting (yet): the validators' messages are of no use here
        message = Consensus.decode(payload).message
        if isinstance(message, tendermint.Proposal):
            check_block_size(message.value, self.node.rules.block_limits)
        self._inputs.offer(
            peer.node_id,
            len(payload),
            lambda: self._consensus_message(peer, message, payload),
        )

    async def _consensus_message(
        self, peer: PeerInfo, message: tendermint.Message, data: bytes
    ) -> None:
        await self._carry_out(self.core.on_message(message), source=peer, data=data)
        self._note_round()

    # ---- sync ----------------------------------------------------------------------------
    def _update_lag(self) -> None:
        self.metrics.sync_lag.set(self._network_status()["sync_lag_blocks"])

    async def _on_blocks(self, peer: PeerInfo, payload: bytes) -> None:
        """BLOCKS that sync takes (``BlockSync.take``) are decoded off the event loop and
        applied in the driver's turn."""
        message = self.sync.take(peer, payload, self.is_validator)
        if message is None:
            return
        blocks = await asyncio.to_thread(message.blocks)
        self._inputs.offer(peer.node_id, len(payload), lambda: self._apply_synced(peer, blocks))

    async def _apply_synced(self, peer: PeerInfo, blocks: list) -> None:
        applied = 0
        for block, cert in blocks:
            if block.header.height != self.node.state.height + 1:
                continue  # consensus got there first
            try:
                await self.node.apply_certified(block, cert)
            except InvalidBlock as exc:
                self._ban(peer.node_id, f"served an invalid block: {exc}")
                break
            applied += 1
            self._head_certificate = cert.encode()
            self.stats.saw(peer, block.header.height)
            await self._push_committed(block, cert, exclude=peer.node_id)
        if applied:
            self.sync.answered(peer.node_id)
            log.log(
                logging.INFO if applied > 1 else logging.DEBUG,
                "synced %d block(s) from %s, now at height %d",
                applied,
                peer.node_id,
                self.node.state.height,
            )
            await self.net.broadcast(KIND_STATUS, self._status())
            head = self.node.state
            if self._holding and head.block_time_ms > self._started_at * 1000:
                self._holding = False
                log.info("block %d was committed after this start: voting again", head.height)
            if self.core is not None and not self._holding:
                await self._start_height()
        self._update_lag()
        self.sync.maybe_sync()

    # ---- background loops ----------------------------------------------------------------
    async def _status_loop(self) -> None:
        while True:
            await asyncio.sleep(STATUS_EVERY_S)  # periodic: a lost STATUS heals by itself
            await self.net.broadcast(KIND_STATUS, self._status())
            self.sync.maybe_sync()
            await self._send_heartbeat()
            for peer in self.net.peers():
                await self.stats.ping(peer.node_id)

    async def _send_heartbeat(self) -> None:
        """An activated node proves it is alive once per epoch (DESIGN §6)."""
        heartbeat = self.node.heartbeat()
        if heartbeat is None:
            return
        try:
            (refused,) = await self.node.submit([heartbeat])
        except JournalError as exc:  # a full disk, say: the next status round tries again
            log.error("heartbeat for epoch %d not journaled: %s", heartbeat.epoch, exc)
            return
        if refused is None:
            log.info("heartbeat for epoch %d submitted", heartbeat.epoch)
        else:
            log.warning("heartbeat for epoch %d refused: %s", heartbeat.epoch, refused.message)
