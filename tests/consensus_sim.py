"""A deterministic simulation of QNet's Tendermint core, in the spirit of FoundationDB's
simulator and TigerBeetle's VOPR.

One seeded ``random.Random`` drives everything and time is virtual (a priority queue of
events), so a seed replays exactly. The code under test is the real ``qnet.tendermint.Core``
with real Ed25519 keys and signatures; messages cross the simulated network in their wire
encoding, and this module is the driver a node would be: it carries out the core's effects,
keeps the signing state and a log of the consensus messages of unfinished heights across
crashes, gossips, and syncs committed blocks with their certificates to validators that
fell behind.

Faults: the network delays, loses and partitions messages; honest validators crash (now and
then right after they commit) and restart as a new core at their last committed height + 1;
one Byzantine validator equivocates with a strategy aimed at locks (see "the Byzantine
validator" below) and forges proposals: other values, invalid values, polkas that never
were.

The run has two phases. During the faulty phase anything above may happen. Then the faults
stop: every honest validator is up, the network heals, loses nothing and delivers within
``stable_delay_ms``; the Byzantine validator keeps at it. Checks:
- safety, on every commit: honest validators never commit different values at a height, no
  validator commits twice at a height, every decision carries a commit certificate that
  verifies, and no validator ever reports an honest one for equivocating;
- liveness: after the faults stop every honest validator commits a height nobody had
  committed before, within a bound computed from the timeouts, and keeps committing.

Replay one seed: QNET_SIM_SEED=1234 pytest tests/unit/test_consensus_sim.py
"""

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from qnet import crypto
from qnet.block import BlockError, CommitCertificate
from qnet.tendermint import (
    Broadcast,
    Core,
    Decide,
    Effect,
    Equivocation,
    Message,
    PersistSigningState,
    Proposal,
    RequestValue,
    ScheduleTimeout,
    SigningState,
    Step,
    Timeout,
    Timeouts,
    ValidateValue,
    ValidatorSet,
    Vote,
    VoteKind,
    decode_message,
    proposal_signing_bytes,
    sender,
    vote_signing_bytes,
)

CHAIN_ID = "qnet-sim"
NETWORK = crypto.Network(CHAIN_ID, crypto.digest(b"qnet-sim genesis"))
REPLAY = "QNET_SIM_SEED={seed} pytest tests/unit/test_consensus_sim.py"
INVALID_PREFIX = b"\xff"  # values starting with it fail the driver's validity check
MAX_SYNC_BLOCKS = 8
NEW_HEIGHTS = 3  # after the faults, each honest validator commits this many new heights
SIM_TIMEOUTS = Timeouts(
    propose_ms=300,
    propose_delta_ms=100,
    prevote_ms=150,
    prevote_delta_ms=50,
    precommit_ms=150,
    precommit_delta_ms=50,
)
ROUNDS_TO_DECIDE = 6  # after GST: catch up, a Byzantine proposer, an unlocking round, ...


class SimulationFailure(AssertionError):
    def __init__(self, seed: int, problem: str):
        super().__init__(f"seed {seed}: {problem}\nreplay: {REPLAY.format(seed=seed)}")
        self.seed = seed


class SafetyViolation(SimulationFailure):
    pass


class LivenessViolation(SimulationFailure):
    pass


def value_id(value: bytes) -> bytes:
    return crypto.digest(value)


def is_valid(value: bytes) -> bool:
    return not value.startswith(INVALID_PREFIX)


class LockIgnoringCore(Core):
    """Deliberately unsafe: prevotes for any valid proposal, as if it were never locked.
    The sanity test shows that the simulation catches it."""

    def _lock_allows(self, value_id: bytes, valid_round: int) -> bool:
        return True


@dataclass(frozen=True)
class SimConfig:
    validators: int = 4
    byzantine: int | None = 0  # index of the equivocating validator
    fault_ms: int = 60_000
    max_delay_ms: int = 300  # the faulty phase draws a per-seed bound up to this
    max_loss: float = 0.3  # and a per-seed loss rate up to this
    stable_delay_ms: int = 40
    gossip_ms: int = 500  # validators re-send this height's messages and their status
    timeouts: Timeouts = SIM_TIMEOUTS
    core: type[Core] = Core
    keep_signing_state: bool = True  # False: a restarted validator forgets what it signed
    keep_message_log: bool = True  # False: a restarted validator forgets the messages it had
    crash_after_commit: float = 0.1  # chance that a validator crashes as soon as it commits
    stay_down: tuple[int, ...] = ()  # honest validators that do not come back after faults


@dataclass(frozen=True)
class Status:
    next_height: int


@dataclass(frozen=True)
class SyncBlocks:
    blocks: tuple[tuple[int, bytes, CommitCertificate], ...]


Payload = bytes | Status | SyncBlocks  # consensus messages travel in their wire encoding


@dataclass(eq=False)
class SimValidator:
    index: int
    key: crypto.KeyPair
    byzantine: bool
    core: Core | None = None
    incarnation: int = 0
    # what survives a crash: committed values with certificates, the signing state and the
    # log of consensus messages for its height and later ones (wire bytes -> height)
    committed: dict[int, tuple[bytes, CommitCertificate]] = field(default_factory=dict)
    signing_state: SigningState | None = None
    known: dict[bytes, int] = field(default_factory=dict)
    committed_at: dict[int, int] = field(default_factory=dict)  # height -> virtual ms
    sent: list[tuple[int, bytes]] = field(default_factory=list)  # Byzantine: (to, message)

    @property
    def next_height(self) -> int:
        return len(self.committed) + 1


@dataclass(frozen=True)
class SimResult:
    seed: int
    steps: int
    now_ms: int
    heights: tuple[int, ...]  # committed height of each validator at the end
    stable_height: int  # highest honest committed height when the faults stopped
    evidence: int  # equivocations honest validators reported
    trace: bytes  # digest of every commit (who, height, value, time): equal runs, equal trace


class Simulation:
    def __init__(self, seed: int, config: SimConfig | None = None):
        self.seed = seed
        self.config = config or SimConfig()
        self.rng = random.Random(seed)
        self.now = 0
        self.steps = 0
        self._queue: list[tuple[int, int, Callable[..., None], tuple]] = []
        self._seq = 0
        cfg = self.config
        keys = [
            crypto.KeyPair(crypto.digest(f"sim {seed} validator {i}".encode()))
            for i in range(cfg.validators)
        ]
        self.validator_set = ValidatorSet({k.public_key: 1 for k in keys})
        self.nodes = [SimValidator(i, k, i == cfg.byzantine) for i, k in enumerate(keys)]
        self.index_of = {k.public_key: i for i, k in enumerate(keys)}
        self.first_commit: dict[int, tuple[bytes, int]] = {}  # height -> (value, by whom)
        self.evidence = 0
        self._trace = crypto.digest(b"")
        self._seen_values: dict[tuple[int, int], list[bytes]] = {}  # Byzantine's view
        self._casts: dict[int, list[int]] = {}  # height -> X, Y, Z of the Byzantine
        self._own_prevotes: dict[tuple[int, int], bytes | None] = {}  # (height, round)
        self._backed: set[tuple[int, int, int]] = set()  # (peer, height, round)
        self.stable = False
        self._target_height = 0  # set when the faults stop
        self._live = False  # every honest validator reached the target height
        self.group_of: dict[int, int] = {}  # partition: node -> group; empty when healed
        self.loss = self.rng.uniform(0, cfg.max_loss)
        self.max_delay = self.rng.randint(20, cfg.max_delay_ms)

    @property
    def honest(self) -> list[SimValidator]:
        return [n for n in self.nodes if not n.byzantine]

    def fail(self, kind: type[SimulationFailure], problem: str) -> None:
        raise kind(self.seed, f"at {self.now} ms: {problem}")

    # ---- the event loop --------------------------------------------------------------
    def _at(self, when: int, action: Callable[..., None], *args: object) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (when, self._seq, action, args))

    def _run_until(self, end: int) -> None:
        while self._queue and self._queue[0][0] <= end and not self._live:
            self.now, _, action, args = heapq.heappop(self._queue)
            self.steps += 1
            action(*args)

    def run(self) -> SimResult:
        cfg = self.config
        for node in self.nodes:
            self._start(node)
        t, gap = 0, self.rng.randint(300, 3000)  # some seeds are stormier than others
        while (t := t + self.rng.randint(1, 2 * gap)) < cfg.fault_ms:
            self._at(t, self._chaos)
        self._run_until(cfg.fault_ms)
        self._stabilise()
        stable_height = max(n.next_height - 1 for n in self.honest)
        self._target_height = stable_height + NEW_HEIGHTS
        rounds = [n.core.round for n in self.honest if n.core is not None]
        first_deadline = cfg.fault_ms + self._decision_bound(max(rounds, default=0))
        end = first_deadline + NEW_HEIGHTS * self._decision_bound(0)
        self._run_until(end)
        self._check_liveness(stable_height, first_deadline)
        return SimResult(
            self.seed,
            self.steps,
            self.now,
            tuple(n.next_height - 1 for n in self.nodes),
            stable_height,
            self.evidence,
            self._trace,
        )

    def _decision_bound(self, round_: int) -> int:
        """Time for ROUNDS_TO_DECIDE rounds from ``round_`` with no message lost, plus two
        gossip periods to re-send what was lost before and to sync laggards."""
        t, delay = self.config.timeouts, self.config.stable_delay_ms
        rounds = range(round_, round_ + ROUNDS_TO_DECIDE)
        return 2 * self.config.gossip_ms + sum(
            sum(t.duration_ms(step, r) for step in Step) + 3 * delay for r in rounds
        )

    # ---- validators ------------------------------------------------------------------
    def _start(self, node: SimValidator) -> None:
        cfg = self.config
        saved = node.signing_state if cfg.keep_signing_state else None
        node.core = cfg.core(
            network=NETWORK,
            validators=self.validator_set,
            me=node.key.public_key,
            sign=node.key.sign,
            verify=crypto.verify,
            value_id=value_id,
            timeouts=cfg.timeouts,
            signing_state=saved,
        )
        self._execute(node, node.core.start_height(node.next_height))
        if not cfg.keep_message_log:
            node.known.clear()
        for message in list(node.known):  # replay the write-ahead log
            if node.core is not None and node.known.get(message, 0) >= node.next_height:
                self._execute(node, node.core.on_message(decode_message(message)))
        self._at(
            self.now + self.rng.randint(1, cfg.gossip_ms), self._gossip, node, node.incarnation
        )

    def _crash(self, node: SimValidator) -> None:
        node.core = None
        node.incarnation += 1  # its pending timers and answers die with it

    def _execute(self, node: SimValidator, effects: list[Effect]) -> None:
        """The driver: carry out the core's effects in order."""
        assert node.core is not None
        inc, rng = node.incarnation, self.rng
        for effect in effects:
            match effect:
                case PersistSigningState(state):
                    node.signing_state = state
                case Broadcast(message):
                    self._broadcast(node, message)
                case ScheduleTimeout(timeout, delay_ms):
                    self._at(self.now + delay_ms, self._timeout, node, inc, timeout)
                case RequestValue(height, round_):
                    value = b"v" + rng.randbytes(15)
                    self._at(
                        self.now + rng.randint(1, 20),
                        self._value_ready,
                        node,
                        inc,
                        height,
                        round_,
                        value,
                    )
                case ValidateValue(height, vid, value):
                    self._at(
                        self.now + rng.randint(1, 10),
                        self._validity_ready,
                        node,
                        inc,
                        height,
                        vid,
                        is_valid(value),
                    )
                case Decide(height, _round, value, certificate):
                    self._commit(node, height, value, certificate)
                case Equivocation(first, second):
                    self._check_evidence(node, first, second)

    def _timeout(self, node: SimValidator, inc: int, timeout: Timeout) -> None:
        if node.core is not None and node.incarnation == inc:
            self._execute(node, node.core.on_timeout(timeout))

    def _value_ready(
        self, node: SimValidator, inc: int, height: int, round_: int, value: bytes
    ) -> None:
        if node.core is not None and node.incarnation == inc:
            self._execute(node, node.core.on_value(height, round_, value))

    def _validity_ready(
        self, node: SimValidator, inc: int, height: int, vid: bytes, valid: bool
    ) -> None:
        if node.core is not None and node.incarnation == inc:
            self._execute(node, node.core.on_validity(height, vid, valid))

    def _gossip(self, node: SimValidator, inc: int) -> None:
        """Every gossip period: send each peer the messages of this height that it lacks,
        and announce our height. This is the paper's gossip assumption (a message a correct
        validator holds reaches every correct validator after GST), with the peer's holdings
        read from the simulation the way Tendermint's gossip learns them from its peers."""
        if node.core is None or node.incarnation != inc:
            return
        for peer in self._peers(node):
            lacking = self.nodes[peer].known
            if node.byzantine:
                wanted = [m for to, m in node.sent if to == peer and m not in lacking]
            else:
                wanted = [m for m in node.known if m not in lacking]
            for message in wanted:
                self._send(node.index, peer, message)
            self._send(node.index, peer, Status(node.next_height))
        self._at(self.now + self.config.gossip_ms, self._gossip, node, inc)

    # ---- commits and the safety checks -----------------------------------------------
    def _commit(
        self, node: SimValidator, height: int, value: bytes, certificate: CommitCertificate
    ) -> None:
        """Check, make durable, move the core to the next height: the node's commit path."""
        if height in node.committed or height != node.next_height:
            self.fail(
                SafetyViolation,
                f"validator {node.index} commits height {height} "
                f"but its next height is {node.next_height}",
            )
        try:
            self._verify_certificate(height, value, certificate)
        except BlockError as exc:
            self.fail(
                SafetyViolation,
                f"validator {node.index} decided height {height} "
                f"without a valid certificate: {exc}",
            )
        if not node.byzantine:
            first_value, by = self.first_commit.setdefault(height, (value, node.index))
            if first_value != value:
                self.fail(
                    SafetyViolation,
                    f"validators {by} and {node.index} committed "
                    f"different values at height {height}",
                )
        node.committed[height] = (value, certificate)
        node.committed_at[height] = self.now
        self._live = self.stable and all(
            n.next_height > self._target_height
            for n in self.honest
            if n.index not in self.config.stay_down
        )
        node.known = {m: h for m, h in node.known.items() if h > height}
        node.sent = [(to, m) for to, m in node.sent if decode_message(m).height > height]
        self._trace = crypto.digest(
            self._trace
            + bytes([node.index])
            + height.to_bytes(8, "big")
            + value
            + self.now.to_bytes(8, "big")
        )
        assert node.core is not None
        self._execute(node, node.core.start_height(height + 1))
        if (
            not self.stable
            and not node.byzantine
            and self.rng.random() < self.config.crash_after_commit
        ):
            # the nastiest moment: nobody else may know yet what this validator committed
            self._at(self.now, self._crash_for_a_while, node)

    def _verify_certificate(
        self, height: int, value: bytes, certificate: CommitCertificate
    ) -> None:
        if certificate.height != height or certificate.block_hash != value_id(value):
            raise BlockError("the certificate is for another value")
        certificate.verify(NETWORK, self.validator_set.powers)

    def _check_evidence(self, node: SimValidator, first: Message, second: Message) -> None:
        offender = self.index_of[sender(first)]
        if not self.nodes[offender].byzantine:
            self.fail(
                SafetyViolation, f"honest validator {offender} equivocated: {first} and {second}"
            )
        self.evidence += not node.byzantine

    def _check_liveness(self, stable_height: int, first_deadline: int) -> None:
        for node in self.honest:
            if node.index in self.config.stay_down:
                continue
            new = node.committed_at.get(stable_height + 1)
            if new is None or new > first_deadline:
                self.fail(
                    LivenessViolation,
                    f"validator {node.index} did not commit height "
                    f"{stable_height + 1} by {first_deadline} ms "
                    f"(faults stopped at {self.config.fault_ms} ms)",
                )
            if node.next_height <= self._target_height:
                self.fail(
                    LivenessViolation,
                    f"validator {node.index} stalled at height "
                    f"{node.next_height - 1}, short of "
                    f"{self._target_height}",
                )

    # ---- the network -----------------------------------------------------------------
    def _peers(self, node: SimValidator) -> list[int]:
        return [n.index for n in self.nodes if n is not node]

    def _send(self, src: int, dst: int, payload: Payload) -> None:
        if self.group_of and self.group_of[src] != self.group_of[dst]:
            return
        if not self.stable and self.rng.random() < self.loss:
            return
        bound = self.config.stable_delay_ms if self.stable else self.max_delay
        self._at(self.now + self.rng.randint(1, bound), self._deliver, src, dst, payload)

    def _broadcast(self, node: SimValidator, message: Message) -> None:
        if node.byzantine:
            self._equivocate(node, message)
            return
        encoded = message.encode()
        node.known[encoded] = message.height
        for peer in self._peers(node):
            self._send(node.index, peer, encoded)

    def _deliver(self, src: int, dst: int, payload: Payload) -> None:
        node = self.nodes[dst]
        if node.core is None:
            return
        match payload:
            case Status(next_height):
                self._serve_sync(node, src, next_height)
            case SyncBlocks(blocks):
                self._apply_sync(node, blocks)
            case bytes():
                message = decode_message(payload)
                window = node.core.limits.future_heights
                if node.next_height <= message.height <= node.next_height + window:
                    node.known[payload] = message.height  # what the core keeps, gossip knows
                if node.byzantine:
                    self._back(node, src, message)
                self._execute(node, node.core.on_message(message))

    def _serve_sync(self, node: SimValidator, peer: int, their_next: int) -> None:
        heights = range(their_next, min(node.next_height, their_next + MAX_SYNC_BLOCKS))
        if heights:
            blocks = tuple((h, *node.committed[h]) for h in heights)
            self._send(node.index, peer, SyncBlocks(blocks))

    def _apply_sync(self, node: SimValidator, blocks: tuple) -> None:
        """Catch up on blocks a peer committed: a stand-in for the node's sync component."""
        for height, value, certificate in blocks:
            if node.core is None or height != node.next_height:
                continue
            try:
                self._verify_certificate(height, value, certificate)
            except BlockError:
                continue
            self._commit(node, height, value, certificate)

    # ---- faults ----------------------------------------------------------------------
    def _chaos(self) -> None:
        rng = self.rng
        kind = rng.choice(("crash", "crash", "partition", "heal"))
        if kind == "crash":
            up = [n for n in self.honest if n.core is not None]
            if up:
                self._crash_for_a_while(rng.choice(up))
        elif kind == "partition":
            order = [n.index for n in self.nodes]
            rng.shuffle(order)
            cut = rng.randint(1, len(order) - 1)
            self.group_of = {i: int(pos >= cut) for pos, i in enumerate(order)}
        else:
            self.group_of = {}

    def _crash_for_a_while(self, node: SimValidator) -> None:
        if node.core is None:
            return
        self._crash(node)
        back = min(self.now + self.rng.randint(200, 4000), self.config.fault_ms)
        self._at(back, self._restart, node)

    def _restart(self, node: SimValidator) -> None:
        if node.core is None and not self.stable:
            self._start(node)

    def _stabilise(self) -> None:
        self.stable = True
        self.group_of = {}
        for node in self.honest:
            if node.index in self.config.stay_down:
                if node.core is not None:
                    self._crash(node)
            elif node.core is None:
                self._start(node)

    # ---- the Byzantine validator -----------------------------------------------------
    # The split-brain attack on locks. In each height the Byzantine validator casts the
    # others as X, Y and Z, Z being the proposer of the round after its own proposal:
    # - X and Y get its proposal and prevote, Z conflicting ones: X and Y lock, Z does not;
    # - only X gets its precommit, so that X may commit alone;
    # - it backs every prevote it receives at once with a prevote for the same value and,
    #   unless it prevoted that value itself, a precommit: a Byzantine validator waits for
    #   no timeout. A core that forgets its lock now lets Y and Z commit Z's next proposal
    #   before they learn what X committed.

    def _cast(self, node: SimValidator, message: Message) -> list[int]:
        cast = self._casts.get(message.height)
        if cast is None:
            cast = self._peers(node)
            self.rng.shuffle(cast)
            if isinstance(message, Proposal):
                z = self.index_of[self.validator_set.proposer(message.height, message.round + 1)]
                if z in cast:
                    cast.remove(z)
                    cast.append(z)
            self._casts[message.height] = cast
        return cast

    def _equivocate(self, node: SimValidator, message: Message) -> None:
        cast = self._cast(node, message)
        if isinstance(message, Proposal):
            told, twin = cast[:2], self._twin_proposal(node, message)
        else:
            if message.kind is VoteKind.PREVOTE:
                self._own_prevotes[message.height, message.round] = message.value_id
            told = cast[:2] if message.kind is VoteKind.PREVOTE else cast[:1]
            twin = self._twin_vote(node, message)
        for peer in cast:
            self._send_byzantine(node, peer, message if peer in told else twin)

    def _back(self, node: SimValidator, src: int, message: Message) -> None:
        """What the Byzantine validator does with a message it receives."""
        if isinstance(message, Proposal):
            self._remember_value(message)
            return
        h, r, target = message.height, message.round, message.value_id
        if message.kind is not VoteKind.PREVOTE or target is None or (src, h, r) in self._backed:
            return
        self._backed.add((src, h, r))
        self._send_byzantine(node, src, self._signed_vote(node, VoteKind.PREVOTE, h, r, target))
        if target != self._own_prevotes.get((h, r)):
            self._send_byzantine(
                node, src, self._signed_vote(node, VoteKind.PRECOMMIT, h, r, target)
            )

    def _send_byzantine(self, node: SimValidator, peer: int, message: Message) -> None:
        encoded = message.encode()
        node.sent.append((peer, encoded))
        self._send(node.index, peer, encoded)

    def _remember_value(self, proposal: Proposal) -> None:
        seen = self._seen_values.setdefault((proposal.height, proposal.round), [])
        vid = value_id(proposal.value)
        if vid not in seen:
            seen.append(vid)

    def _twin_proposal(self, node: SimValidator, m: Proposal) -> Proposal:
        """Another value, sometimes invalid, sometimes citing a polka that never was."""
        value = (INVALID_PREFIX if self.rng.random() < 0.25 else b"v") + self.rng.randbytes(15)
        valid_round = self.rng.randint(-1, m.round - 1)
        signed = proposal_signing_bytes(NETWORK, m.height, m.round, valid_round, value_id(value))
        twin = replace(m, value=value, valid_round=valid_round, signature=node.key.sign(signed))
        self._remember_value(m)
        self._remember_value(twin)
        return twin

    def _twin_vote(self, node: SimValidator, m: Vote) -> Vote:
        """A vote for the step of ``m`` with another value proposed in the round, else nil
        (or junk if ``m`` is nil)."""
        others = [v for v in self._seen_values.get((m.height, m.round), []) if v != m.value_id]
        if others:
            target = self.rng.choice(others)
        else:
            target = None if m.value_id is not None else self.rng.randbytes(32)
        return self._signed_vote(node, m.kind, m.height, m.round, target)

    def _signed_vote(
        self, node: SimValidator, kind: VoteKind, height: int, round_: int, target: bytes | None
    ) -> Vote:
        signed = vote_signing_bytes(kind, NETWORK, height, round_, target)
        return Vote(
            kind, CHAIN_ID, height, round_, target, node.key.public_key, node.key.sign(signed)
        )


def run(seed: int, config: SimConfig | None = None) -> SimResult:
    return Simulation(seed, config).run()
