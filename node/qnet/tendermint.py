"""Tendermint consensus as a state machine without I/O.

This is Algorithm 1 of Buchman, Kwon, Milosevic, "The latest gossip on BFT consensus"
(arXiv:1807.04938); comments give the paper's line numbers beside the rules. In the style of
informalsystems/malachite the core takes inputs and returns effects; it reads no clock, no
socket, no disk and no random source, so the node's network layer and a deterministic
simulation (tests/consensus_sim.py) drive the same code.

Inputs (methods of ``Core``; each returns the effects to carry out, in order):
    start_height(h)            begin height h at round 0 (the paper's "upon start", line 10)
    on_message(m)              a Proposal or Vote from the network (or from the driver's log)
    on_timeout(t)              a timeout the core scheduled has expired
    on_value(h, r, value)      the answer to RequestValue (the paper's getValue(), line 18)
    on_validity(h, id, valid)  the answer to ValidateValue (the paper's valid(v))

Effects:
    PersistSigningState  make it durable before carrying out any later effect of the list
    Broadcast            send the signed message to every other validator
    ScheduleTimeout      call on_timeout(timeout) after delay_ms; never cancelled, stale
                         ones are ignored
    RequestValue         build a value (block) to propose, then call on_value
    ValidateValue        check the value against the state of this height, then on_validity
    Decide               the value is final at this height, with its commit certificate;
                         commit it, then call start_height(h + 1)
    Equivocation         evidence: two different signed messages from one validator for
                         one step, reported once per validator, step and round
    Accepted             the message from on_message passed every check (sender in the
                         validator set, height and round window, signature, per-sender
                         limits) and is kept; first in its list. Only now may the driver
                         store, log, relay or count it
    Refused              the message from on_message is ignored, and why (a reason of
                         ``Core.dropped``); last in its list, after the Equivocation it may
                         prove
    Forgotten            messages accepted before that the core no longer keeps (a
                         validator's lowest round above ours, evicted for a higher one, see
                         Limits): the driver need not keep, log or re-send them either

Voting power replaces process counts: "2f+1" is more than 2/3 of the total power, "f+1" is
more than 1/3 of it (then at least one correct validator is among the senders).

Design decisions:
- Values are opaque bytes (an encoded block); the driver supplies ``value_id`` (the block
  hash). Validity is asked for with a ValidateValue effect and answered through
  ``on_validity`` rather than by a synchronous callback: checking a block means applying its
  transactions to the state of this height and verifying their signatures, which the node
  does off its event loop, and proposals for a future height are buffered here and can only
  be checked once the parent block is committed. Until the answer comes the core acts as if
  the proposal had not arrived. A value the core got from on_value is valid by construction.
- Proposer rotation is a smooth weighted round robin (Tendermint's proposer-priority
  arithmetic over one cycle) indexed by height + round: a pure function of (height, round)
  that every node computes alike, with nothing to persist or sync.
- A validator's conflicting votes are evidence, and each counts for its own value (see
  _Tally): counting only the first would let an equivocating validator stall correct ones.
- Restart. The driver persists the SigningState before a signed message leaves the process
  and passes it to the new core, which then never signs at or before that step again (no
  double signing) and keeps its lock and valid value. Liveness after a crash also needs the
  messages of the unfinished height: without them, validators that restarted stay silent in
  the rounds they already signed, each waiting for votes lost with the others' memory, and a
  lock may outlive the only copies of the polka that would release it (the simulation
  stalls in most seeds without them). So the driver keeps a write-ahead log of the
  consensus messages of the heights it has not committed (those it sent and those it
  received) and, after start_height, feeds them back through on_message. Otherwise a
  validator restarts at its last committed height + 1 with empty round state; line 55
  brings it to the others' round.
- The proposer also schedules timeoutPropose (the paper does so only for the others, line
  21) because its value arrives asynchronously; without it a proposer whose driver never
  answers, or whose signing state forbids proposing again, would wait forever.
"""

import math
import struct
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from enum import IntEnum

from .block import TAG_PRECOMMIT, CommitCertificate, precommit_message
from .crypto import Network, prefixed, tagged

TAG_PREVOTE = 0x21
TAG_PROPOSAL = 0x23
ID_LEN = 32
NIL_ID = bytes(ID_LEN)  # how a nil vote is encoded; no value may have an all-zero id
MAX_ROUND = 2**32 - 1
MAX_PROPOSER_CYCLE = 1 << 16  # bound on total power / gcd of powers: the cycle is precomputed

_VOTE = struct.Struct(">QI32s")  # the payload of block.precommit_message, shared by prevotes
_PROPOSAL_SIGNED = struct.Struct(">QIi32s")  # height, round, valid round, value id
_PROPOSAL_WIRE = struct.Struct(">QIi32s64s")  # height, round, valid round, proposer, sig
_SIGNER = struct.Struct(">32s64s")  # validator public key, signature
_STATE = struct.Struct(">QIBi32si32s")

Signer = Callable[[bytes], bytes]
Verifier = Callable[[bytes, bytes, bytes], bool]  # (public key, signature, message)
ValueId = Callable[[bytes], bytes]


class MessageError(ValueError):
    """Bytes or fields that are not a well-formed consensus message."""


class Step(IntEnum):
    PROPOSE = 0
    PREVOTE = 1
    PRECOMMIT = 2


class VoteKind(IntEnum):
    """The tag byte of the vote's signed message doubles as its kind."""

    PREVOTE = TAG_PREVOTE
    PRECOMMIT = TAG_PRECOMMIT

    @property
    def step(self) -> Step:
        return Step.PREVOTE if self is VoteKind.PREVOTE else Step.PRECOMMIT


def _check_common(chain_id: str, height: int, round_: int, signer: bytes, signature: bytes) -> None:
    if not 1 <= len(chain_id.encode()) <= 255:
        raise MessageError("chain id must be 1..255 bytes")
    if not 0 <= height < 2**64 or not 0 <= round_ <= MAX_ROUND:
        raise MessageError("height or round out of range")
    if len(signer) != 32 or len(signature) != 64:
        raise MessageError("signer key must be 32 bytes and signature 64 bytes")


def _split_prefixed(data: bytes) -> tuple[int, str, int]:
    """(tag, chain id, offset of the payload) of a message as it travels (``prefixed``)."""
    if len(data) < 2:
        raise MessageError("message is too short")
    end = 2 + data[1]
    try:
        chain_id = data[2:end].decode()
    except UnicodeDecodeError:
        raise MessageError("chain id is not UTF-8") from None
    return data[0], chain_id, end


@dataclass(frozen=True, slots=True)
class Proposal:
    """⟨PROPOSAL, h, r, v, vr⟩ signed by proposer(h, r).

    The signature covers the value's id, not the value: ``signing_bytes(network,
    value_id(value))``, tagged with the network (``crypto.tagged``). Wire encoding: tag 0x23,
    chain id, height u64, round u32, valid_round i32, proposer(32), signature(64), then the
    value to the end.
    """

    chain_id: str
    height: int
    round: int
    valid_round: int  # -1: the proposer saw no earlier polka for this value
    value: bytes
    proposer: bytes
    signature: bytes

    def __post_init__(self) -> None:
        _check_common(self.chain_id, self.height, self.round, self.proposer, self.signature)
        if not -1 <= self.valid_round < self.round:
            raise MessageError("valid round must be -1 or below the proposal's round")

    def signing_bytes(self, network: Network, value_id: bytes) -> bytes:
        return proposal_signing_bytes(network, self.height, self.round, self.valid_round, value_id)

    def encode(self) -> bytes:
        return prefixed(
            TAG_PROPOSAL,
            self.chain_id,
            _PROPOSAL_WIRE.pack(
                self.height, self.round, self.valid_round, self.proposer, self.signature
            )
            + self.value,
        )


def proposal_signing_bytes(
    network: Network, height: int, round_: int, valid_round: int, value_id: bytes
) -> bytes:
    return tagged(
        TAG_PROPOSAL, network, _PROPOSAL_SIGNED.pack(height, round_, valid_round, value_id)
    )


@dataclass(frozen=True, slots=True)
class Vote:
    """⟨PREVOTE, h, r, id(v)⟩ or ⟨PRECOMMIT, h, r, id(v)⟩; value_id None is nil.

    Wire encoding: tag (the kind), chain id, height u64, round u32, value id(32) (all zero:
    nil), then the validator key(32) and signature(64). The signed message is the same
    fields tagged with the network (``crypto.tagged``); a precommit's is
    ``block.precommit_message``, so the precommits for one value in one round form a
    ``block.CommitCertificate`` as they are.
    """

    kind: VoteKind
    chain_id: str
    height: int
    round: int
    value_id: bytes | None
    validator: bytes
    signature: bytes

    def __post_init__(self) -> None:
        _check_common(self.chain_id, self.height, self.round, self.validator, self.signature)
        if not isinstance(self.kind, VoteKind):
            raise MessageError("a vote's kind is a VoteKind")
        if self.value_id is not None and (len(self.value_id) != ID_LEN or self.value_id == NIL_ID):
            raise MessageError("a vote's value id is 32 bytes and not all zero")

    def signing_bytes(self, network: Network) -> bytes:
        return vote_signing_bytes(self.kind, network, self.height, self.round, self.value_id)

    def encode(self) -> bytes:
        fields = _VOTE.pack(self.height, self.round, self.value_id or NIL_ID)
        return prefixed(self.kind, self.chain_id, fields) + _SIGNER.pack(
            self.validator, self.signature
        )


def vote_signing_bytes(
    kind: VoteKind, network: Network, height: int, round_: int, value_id: bytes | None
) -> bytes:
    target = value_id or NIL_ID
    if kind is VoteKind.PRECOMMIT:
        return precommit_message(network, height, round_, target)
    return tagged(TAG_PREVOTE, network, _VOTE.pack(height, round_, target))


Message = Proposal | Vote


def decode_message(data: bytes) -> Message:
    """Parse the wire encoding of a proposal or vote; raises MessageError."""
    tag, chain_id, off = _split_prefixed(data)
    if tag == TAG_PROPOSAL:
        if len(data) < off + _PROPOSAL_WIRE.size:
            raise MessageError("proposal is too short")
        height, round_, valid_round, proposer, sig = _PROPOSAL_WIRE.unpack_from(data, off)
        value = data[off + _PROPOSAL_WIRE.size :]
        return Proposal(chain_id, height, round_, valid_round, value, proposer, sig)
    if tag in (TAG_PREVOTE, TAG_PRECOMMIT):
        if len(data) != off + _VOTE.size + _SIGNER.size:
            raise MessageError("vote has the wrong length")
        height, round_, target = _VOTE.unpack_from(data, off)
        validator, sig = _SIGNER.unpack_from(data, off + _VOTE.size)
        value_id = None if target == NIL_ID else target
        return Vote(VoteKind(tag), chain_id, height, round_, value_id, validator, sig)
    raise MessageError(f"unknown consensus message tag {tag:#04x}")


def sender(message: Message) -> bytes:
    return message.proposer if isinstance(message, Proposal) else message.validator


# ---- effects and other inputs ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Timeout:
    step: Step
    height: int
    round: int


@dataclass(frozen=True, slots=True)
class SigningState:
    """What a validator must remember across a crash within an unfinished height.

    ``height``, ``round`` and ``step`` name the last step it signed a message for: after a
    restart ``allows`` refuses that step and every earlier one, so the validator cannot sign
    a second, different proposal or vote (equivocation). The lock (lines 38-39) must survive
    for safety as well; the valid round and value id (lines 42-43) for liveness: a lock is
    released only by a newer polka, and the validator may be the only one able to propose
    its valid value again.
    """

    height: int
    round: int
    step: Step
    locked_round: int = -1
    locked_value_id: bytes | None = None
    valid_round: int = -1
    valid_value_id: bytes | None = None

    def allows(self, height: int, round_: int, step: Step) -> bool:
        return (height, round_, step) > (self.height, self.round, self.step)

    def encode(self) -> bytes:
        return _STATE.pack(
            self.height,
            self.round,
            self.step,
            self.locked_round,
            self.locked_value_id or NIL_ID,
            self.valid_round,
            self.valid_value_id or NIL_ID,
        )

    @classmethod
    def decode(cls, data: bytes) -> "SigningState":
        if len(data) != _STATE.size:
            raise MessageError("signing state has the wrong length")
        height, round_, step, locked_round, locked, valid_round, valid = _STATE.unpack(data)
        return cls(
            height,
            round_,
            Step(step),
            locked_round,
            None if locked == NIL_ID else locked,
            valid_round,
            None if valid == NIL_ID else valid,
        )


@dataclass(frozen=True, slots=True)
class Broadcast:
    message: Message


@dataclass(frozen=True, slots=True)
class ScheduleTimeout:
    timeout: Timeout
    delay_ms: int


@dataclass(frozen=True, slots=True)
class RequestValue:
    height: int
    round: int


@dataclass(frozen=True, slots=True)
class ValidateValue:
    height: int
    value_id: bytes
    value: bytes


@dataclass(frozen=True, slots=True)
class PersistSigningState:
    state: SigningState


@dataclass(frozen=True, slots=True)
class Decide:
    height: int
    round: int
    value: bytes
    certificate: CommitCertificate


@dataclass(frozen=True, slots=True)
class Equivocation:
    first: Message
    second: Message


@dataclass(frozen=True, slots=True)
class Accepted:
    message: Message


# Why the core ignores a message (``Refused.reason``, ``Core.dropped``): one fixed list, so
# a driver can export a counter per reason from the start.
REFUSALS = (
    "not_started",
    "wrong_chain",
    "not_validator",
    "past_height",
    "far_future",
    "not_proposer",
    "malformed_value",  # value_id raised ValueError
    "duplicate",
    "bad_signature",
    "round_limit",
    "proposal_limit",
    "vote_limit",
)


@dataclass(frozen=True, slots=True)
class Refused:
    message: Message
    reason: str  # one of REFUSALS

    def __post_init__(self) -> None:
        assert self.reason in REFUSALS, self.reason


@dataclass(frozen=True, slots=True)
class Forgotten:
    messages: tuple[Message, ...]


Effect = (
    Broadcast
    | ScheduleTimeout
    | RequestValue
    | ValidateValue
    | PersistSigningState
    | Decide
    | Equivocation
    | Accepted
    | Refused
    | Forgotten
)


# ---- configuration -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Timeouts:
    """timeoutPropose/Prevote/Precommit(r) = base + delta * r: later rounds wait longer, so
    after GST they eventually exceed the real message delay (the paper's liveness argument).
    Defaults are Tendermint's."""

    propose_ms: int = 3000
    propose_delta_ms: int = 500
    prevote_ms: int = 1000
    prevote_delta_ms: int = 500
    precommit_ms: int = 1000
    precommit_delta_ms: int = 500

    def duration_ms(self, step: Step, round_: int) -> int:
        base, delta = {
            Step.PROPOSE: (self.propose_ms, self.propose_delta_ms),
            Step.PREVOTE: (self.prevote_ms, self.prevote_delta_ms),
            Step.PRECOMMIT: (self.precommit_ms, self.precommit_delta_ms),
        }[step]
        return base + delta * round_


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on what the core buffers, so a Byzantine validator cannot exhaust memory.

    Rounds up to the current one are kept whole: a validator has at most one counted vote
    per kind there, and the current round only grows by timeouts or because f+1 validators
    (one of them correct) are ahead. Above it each validator keeps its ``future_rounds``
    highest rounds, which is where it is now and what line 55 needs to catch up with it.
    """

    future_heights: int = 1
    future_rounds: int = 3
    proposals_per_round: int = 2  # values kept from an equivocating proposer
    # Different votes kept from an equivocating validator. A vote can matter only if its
    # value is nil or proposed in its round (a quorum holds correct votes, and a correct
    # validator votes only for a proposal it has), so at least proposals_per_round + 1
    # leaves room for every vote that can matter: one for a value nobody proposed gives way
    # to one that can matter, and a flood of such votes cannot crowd out the real ones.
    votes_per_step: int = 3


class ValidatorSet:
    """Validators with voting power, keyed and ordered by public key."""

    def __init__(self, powers: Mapping[bytes, int]):
        if not powers:
            raise ValueError("a validator set needs at least one validator")
        for key, power in powers.items():
            if len(key) != 32 or not isinstance(power, int) or power <= 0:
                raise ValueError("validators are 32-byte keys with positive integer power")
        self.powers: dict[bytes, int] = dict(sorted(powers.items()))
        self.total = sum(self.powers.values())
        self._cycle = _proposer_cycle(self.powers)

    def __contains__(self, key: bytes) -> bool:
        return key in self.powers

    def proposer(self, height: int, round_: int) -> bytes:
        return self._cycle[(height + round_) % len(self._cycle)]

    def is_quorum(self, power: int) -> bool:
        """ "2f+1": more than 2/3 of the voting power."""
        return 3 * power > 2 * self.total

    def has_a_correct_one(self, power: int) -> bool:
        """ "f+1": more than 1/3 of the voting power, so not all of it Byzantine."""
        return 3 * power > self.total


def _proposer_cycle(powers: dict[bytes, int]) -> tuple[bytes, ...]:
    """One cycle of smooth weighted round robin: each validator proposes power/g times,
    spread out (Tendermint's proposer priorities: every step each priority grows by its
    power, the highest proposes and drops by the total; ties go to the lower key)."""
    g = math.gcd(*powers.values())
    weights = {key: power // g for key, power in powers.items()}
    total = sum(weights.values())
    if total > MAX_PROPOSER_CYCLE:
        raise ValueError(
            f"voting powers need a proposer cycle of {total} > "
            f"{MAX_PROPOSER_CYCLE}; use smaller powers"
        )
    priority = dict.fromkeys(weights, 0)
    cycle = []
    for _ in range(total):
        for key, weight in weights.items():
            priority[key] += weight
        chosen = max(priority, key=priority.__getitem__)
        priority[chosen] -= total
        cycle.append(chosen)
    return tuple(cycle)


# ---- the message log ---------------------------------------------------------------------


class _Tally:
    """The votes of one kind in one round.

    A validator counts once towards the round's total ("2f+1 ⟨PREVOTE, h, r, *⟩", lines 34
    and 47) and once towards each value it voted for. An equivocating validator's second
    vote is still a signed message for its value, and the paper counts messages: were only
    its first vote counted, the order in which correct validators happen to receive its two
    votes could split them forever into locks that none of them can see a polka to release.
    Safety is not at stake: two sets of more than 2/3 of the power share more than 1/3,
    hence a correct validator, and a correct validator votes once per step.
    """

    __slots__ = ("power", "power_for", "votes")

    def __init__(self) -> None:
        self.votes: dict[bytes, list[Vote]] = {}  # validator -> its votes, first first
        self.power_for: dict[bytes | None, int] = {}
        self.power = 0

    def find(self, validator: bytes, value_id: bytes | None) -> Vote | None:
        return next((v for v in self.votes.get(validator, ()) if v.value_id == value_id), None)

    def add(self, vote: Vote, weight: int) -> None:
        earlier = self.votes.setdefault(vote.validator, [])
        if not earlier:
            self.power += weight
        earlier.append(vote)
        self.power_for[vote.value_id] = self.power_for.get(vote.value_id, 0) + weight

    def discard(self, vote: Vote, weight: int) -> None:
        """Forget one of a validator's votes; it still counts towards ``power`` if it has
        others."""
        votes = self.votes[vote.validator]
        votes.remove(vote)
        self.power_for[vote.value_id] -= weight
        if not votes:
            del self.votes[vote.validator]
            self.power -= weight

    def remove(self, validator: bytes, weight: int) -> None:
        votes = self.votes.pop(validator, [])
        for vote in votes:
            self.power_for[vote.value_id] -= weight
        if votes:
            self.power -= weight


class _RoundLog:
    __slots__ = ("evidence", "precommits", "prevotes", "proposals", "sender_power", "senders")

    def __init__(self) -> None:
        self.proposals: dict[bytes, Proposal] = {}  # value id -> proposal, arrival order
        self.prevotes = _Tally()
        self.precommits = _Tally()
        self.senders: set[bytes] = set()  # for line 55: anyone with a message in this round
        self.sender_power = 0
        self.evidence: set[tuple[bytes, int]] = set()  # (offender, tag) already reported

    def tally(self, kind: VoteKind) -> _Tally:
        return self.prevotes if kind is VoteKind.PREVOTE else self.precommits


class _HeightLog:
    __slots__ = ("rounds", "rounds_of")

    def __init__(self) -> None:
        self.rounds: dict[int, _RoundLog] = {}
        self.rounds_of: dict[bytes, set[int]] = {}  # validator -> rounds it has messages in

    def round(self, round_: int) -> _RoundLog:
        log = self.rounds.get(round_)
        if log is None:
            log = self.rounds[round_] = _RoundLog()
        return log


# ---- the core ----------------------------------------------------------------------------


class Core:
    """One validator's Tendermint state machine (Algorithm 1), heights driven by the driver.

    ``dropped`` counts ignored messages by reason (``REFUSALS``).
    """

    def __init__(
        self,
        *,
        network: Network,
        validators: ValidatorSet,
        me: bytes,
        sign: Signer,
        verify: Verifier,
        value_id: ValueId,
        timeouts: Timeouts | None = None,
        limits: Limits | None = None,
        signing_state: SigningState | None = None,
    ):
        if me not in validators:
            raise ValueError("the core's key is not a validator")
        self.network = network
        self.validators = validators
        self.me = me
        self.timeouts = timeouts or Timeouts()
        self.limits = limits or Limits()
        self.signing_state = signing_state
        self.dropped: Counter[str] = Counter()
        self._sign = sign
        self._verify = verify
        self._value_id = value_id
        self._started = False
        self._logs: dict[int, _HeightLog] = {}
        self._effects: list[Effect] = []
        self._reset_height(0)

    def _reset_height(self, height: int) -> None:
        """Lines 2-9 and 52-53: a new height starts unlocked, with nothing valid yet."""
        self.height = height
        self.round = 0
        self.step = Step.PROPOSE
        self.decision: bytes | None = None
        self.locked_round = -1
        self.locked_value_id: bytes | None = None
        self.valid_round = -1
        self.valid_value_id: bytes | None = None
        self.valid_value: bytes | None = None  # None with an id: a restart lost the bytes
        self._validity: dict[bytes, bool] = {}
        self._validity_asked: set[bytes] = set()
        self._fired: set[tuple[int, int]] = set()  # (paper line, round): "for the first time"
        saved = self.signing_state
        if saved is not None and saved.height == height:  # a restart within this height
            self.locked_round, self.locked_value_id = saved.locked_round, saved.locked_value_id
            self.valid_round, self.valid_value_id = saved.valid_round, saved.valid_value_id

    # ---- inputs ----------------------------------------------------------------------
    def start_height(self, height: int) -> list[Effect]:
        """Begin ``height`` (after the driver committed height - 1): StartRound(0), line 10."""
        if self._started and height <= self.height:
            raise ValueError(f"height {height} is not above the current height {self.height}")
        self._started = True
        self._reset_height(height)
        self._logs = {h: log for h, log in self._logs.items() if h >= height}
        self._start_round(0)
        for round_log in self._log().rounds.values():
            for value_id, proposal in round_log.proposals.items():
                self._ask_validity(value_id, proposal.value)
        return self._settle()

    def on_message(self, message: Message) -> list[Effect]:
        if isinstance(message, Proposal):
            reason, value_id = self._check_proposal(message)
            if reason is None:
                reason = self._store_proposal(message, value_id)
        else:
            reason = self._check_vote(message)
            if reason is None:
                reason = self._store_vote(message)
        if reason is not None:
            self.dropped[reason] += 1
            self._effects.append(Refused(message, reason))
            return self._take_effects()
        self._effects.insert(0, Accepted(message))
        return self._settle()

    def on_timeout(self, timeout: Timeout) -> list[Effect]:
        if (
            self._started
            and self.decision is None
            and timeout.height == self.height
            and timeout.round == self.round
        ):
            if timeout.step is Step.PROPOSE and self.step is Step.PROPOSE:  # line 57
                self._vote(VoteKind.PREVOTE, None)
                self.step = Step.PREVOTE
            elif timeout.step is Step.PREVOTE and self.step is Step.PREVOTE:  # line 61
                self._vote(VoteKind.PRECOMMIT, None)
                self.step = Step.PRECOMMIT
            elif timeout.step is Step.PRECOMMIT:  # line 65
                self._start_round(self.round + 1)
        return self._settle()

    def on_value(self, height: int, round_: int, value: bytes) -> list[Effect]:
        """The value asked for by RequestValue (line 18); too late once the step moved on."""
        if (
            self._started
            and self.decision is None
            and self.step is Step.PROPOSE
            and (height, round_) == (self.height, self.round)
            and self._is_proposer()
        ):
            self._propose(value, -1)
        return self._settle()

    def on_validity(self, height: int, value_id: bytes, valid: bool) -> list[Effect]:
        """The driver's valid(v) for a value of this height, asked for by ValidateValue."""
        if self._started and height == self.height and value_id in self._validity_asked:
            self._validity[value_id] = valid
        return self._settle()

    # ---- message admission -----------------------------------------------------------
    def _check_proposal(self, proposal: Proposal) -> tuple[str | None, bytes]:
        """(why the proposal is ignored or None, its value id)."""
        reason = self._refusal(proposal)
        if reason is not None:
            return reason, b""
        if proposal.proposer != self.validators.proposer(proposal.height, proposal.round):
            return "not_proposer", b""
        try:
            value_id = self._value_id(proposal.value)
        except ValueError:
            return "malformed_value", b""
        round_log = self._log(proposal.height).rounds.get(proposal.round)
        if round_log is not None and value_id in round_log.proposals:
            return "duplicate", value_id
        signed = proposal.signing_bytes(self.network, value_id)
        return self._signed_refusal(proposal, signed), value_id

    def _check_vote(self, vote: Vote) -> str | None:
        """Why the vote is ignored, or None."""
        reason = self._refusal(vote)
        if reason is not None:
            return reason
        round_log = self._log(vote.height).rounds.get(vote.round)
        if round_log is not None and round_log.tally(vote.kind).find(vote.validator, vote.value_id):
            return "duplicate"  # a retransmission: no need to check its signature again
        return self._signed_refusal(vote, vote.signing_bytes(self.network))

    def _refusal(self, message: Message) -> str | None:
        """Why the message is ignored before its signature is checked, or None."""
        if not self._started:
            return "not_started"
        if message.chain_id != self.network.chain_id:
            return "wrong_chain"
        if sender(message) not in self.validators:
            return "not_validator"
        if message.height < self.height or (
            message.height == self.height and self.decision is not None
        ):
            return "past_height"
        if message.height > self.height + self.limits.future_heights:
            return "far_future"
        return None

    def _signed_refusal(self, message: Message, signed: bytes) -> str | None:
        who = sender(message)
        if not self._verify(who, message.signature, signed):
            return "bad_signature"
        return self._admit_round(message.height, who, message.round)

    def _admit_round(self, height: int, validator: bytes, round_: int) -> str | None:
        """Keep each validator to ``future_rounds`` rounds above ours, its highest ones."""
        current = self.round if height == self.height else 0
        if round_ <= current:
            return None
        log = self._log(height)
        ahead = sorted(r for r in log.rounds_of.get(validator, ()) if r > current)
        if round_ in ahead or len(ahead) < self.limits.future_rounds:
            return None
        if round_ < ahead[0]:
            return "round_limit"
        self._evict(log, validator, ahead[0])
        return None

    def _evict(self, log: _HeightLog, validator: bytes, round_: int) -> None:
        round_log = log.rounds[round_]
        weight = self.validators.powers[validator]
        forgotten = [p for p in round_log.proposals.values() if p.proposer == validator]
        for tally in (round_log.prevotes, round_log.precommits):
            forgotten.extend(tally.votes.get(validator, ()))
        self._effects.append(Forgotten(tuple(forgotten)))
        round_log.proposals = {
            i: p for i, p in round_log.proposals.items() if p.proposer != validator
        }
        round_log.prevotes.remove(validator, weight)
        round_log.precommits.remove(validator, weight)
        if validator in round_log.senders:
            round_log.senders.discard(validator)
            round_log.sender_power -= weight
        log.rounds_of[validator].discard(round_)
        if not round_log.senders:
            del log.rounds[round_]  # above our round and empty: a flood leaves nothing behind

    def _store_proposal(self, proposal: Proposal, value_id: bytes) -> str | None:
        """Add a checked proposal (or our own) to the log; why it was not, or None. An
        equivocating proposer's second value is kept too (lines 36 and 49 may need it) but
        no more than a few."""
        round_log = self._log(proposal.height).round(proposal.round)
        if value_id in round_log.proposals:
            return "duplicate"  # our own, already received: another process signs with our key
        if round_log.proposals:
            self._report(round_log, next(iter(round_log.proposals.values())), proposal)
            if len(round_log.proposals) >= self.limits.proposals_per_round:
                return "proposal_limit"
        round_log.proposals[value_id] = proposal
        self._note_sender(proposal)
        if proposal.height == self.height:
            if value_id == self.valid_value_id:
                self.valid_value = proposal.value  # after a restart: the bytes are back
            self._ask_validity(value_id, proposal.value)
        return None

    def _store_vote(self, vote: Vote) -> str | None:
        """Add a checked vote (or our own) to the log; why it was not, or None. See _Tally
        for conflicting votes."""
        round_log = self._log(vote.height).round(vote.round)
        tally = round_log.tally(vote.kind)
        if tally.find(vote.validator, vote.value_id):
            return "duplicate"  # our own, already received: another process signs with our key
        weight = self.validators.powers[vote.validator]
        earlier = tally.votes.get(vote.validator, [])
        if earlier:
            self._report(round_log, earlier[0], vote)
            if len(earlier) >= self.limits.votes_per_step:
                unproposed = [v for v in earlier if not self._may_matter(round_log, v)]
                if not unproposed or not self._may_matter(round_log, vote):
                    return "vote_limit"
                tally.discard(unproposed[0], weight)  # see Limits.votes_per_step
        tally.add(vote, weight)
        self._note_sender(vote)
        return None

    @staticmethod
    def _may_matter(round_log: _RoundLog, vote: Vote) -> bool:
        return vote.value_id is None or vote.value_id in round_log.proposals

    def _note_sender(self, message: Message) -> None:
        """Line 55 counts the power of validators with any message in a round."""
        log = self._log(message.height)
        round_log = log.rounds[message.round]
        who = sender(message)
        if who not in round_log.senders:
            round_log.senders.add(who)
            round_log.sender_power += self.validators.powers[who]
            log.rounds_of.setdefault(who, set()).add(message.round)

    def _report(self, round_log: _RoundLog, first: Message, second: Message) -> None:
        """Emit evidence of equivocation, once per validator and step of a round."""
        key = (sender(first), TAG_PROPOSAL if isinstance(first, Proposal) else first.kind)
        if key not in round_log.evidence:
            round_log.evidence.add(key)
            self._effects.append(Equivocation(first, second))

    def _ask_validity(self, value_id: bytes, value: bytes) -> None:
        if value_id not in self._validity and value_id not in self._validity_asked:
            self._validity_asked.add(value_id)
            self._effects.append(ValidateValue(self.height, value_id, value))

    # ---- the upon rules --------------------------------------------------------------
    def _settle(self) -> list[Effect]:
        """Fire enabled rules until none is; each firing changes state, so this ends."""
        while self._started and self.decision is None and self._fire_one_rule():
            pass
        return self._take_effects()

    def _fire_one_rule(self) -> bool:
        return (
            self._decide()
            or self._skip_round()
            or self._prevote_on_proposal()
            or self._lock_on_polka()
            or self._precommit_nil_on_polka()
            or self._schedule_prevote_timeout()
            or self._schedule_precommit_timeout()
        )

    def _decide(self) -> bool:
        """Line 49: a proposal from proposer(h, r) and 2f+1 precommits for its id, any r."""
        for round_, round_log in self._log().rounds.items():
            for value_id, power in round_log.precommits.power_for.items():
                proposal = round_log.proposals.get(value_id) if value_id else None
                if (
                    proposal is not None
                    and self.validators.is_quorum(power)
                    and self._validity.get(value_id)
                ):  # line 50
                    self._emit_decision(round_, round_log, proposal, value_id)
                    return True
        return False

    def _emit_decision(
        self, round_: int, round_log: _RoundLog, proposal: Proposal, value_id: bytes
    ) -> None:
        """Line 51; lines 52-54 wait for the driver to commit and call start_height."""
        self.decision = proposal.value
        signatures = tuple(
            sorted(
                (v.validator, v.signature)
                for votes in round_log.precommits.votes.values()
                for v in votes
                if v.value_id == value_id
            )
        )
        certificate = CommitCertificate(self.height, round_, value_id, signatures)
        self._effects.append(Decide(self.height, round_, proposal.value, certificate))

    def _skip_round(self) -> bool:
        """Line 55: f+1 power has messages in a higher round, so a correct validator is
        there; go to the highest such round."""
        higher = [
            r
            for r, round_log in self._log().rounds.items()
            if r > self.round and self.validators.has_a_correct_one(round_log.sender_power)
        ]
        if not higher:
            return False
        self._start_round(max(higher))
        return True

    def _prevote_on_proposal(self) -> bool:
        """Lines 22 and 28: prevote for this round's proposal, or nil."""
        if self.step is not Step.PROPOSE:
            return False
        for value_id, proposal in self._proposals(self.round):
            valid = self._validity.get(value_id)
            vr = proposal.valid_round
            if valid is None or (vr >= 0 and not self._has_polka(vr, value_id)):
                continue  # line 22 needs vr = -1; line 28 needs 2f+1 prevotes in round vr
            if valid and self._lock_allows(value_id, vr):  # lines 23 and 29
                self._vote(VoteKind.PREVOTE, value_id)  # lines 24 and 30
            else:
                self._vote(VoteKind.PREVOTE, None)  # lines 26 and 32
            self.step = Step.PREVOTE  # lines 27 and 33
            return True
        return False

    def _lock_allows(self, value_id: bytes, valid_round: int) -> bool:
        """Line 23 (valid_round = -1): unlocked, or locked on this value. Line 29: locked no
        later than the polka the proposer cites, or on this value."""
        return self.locked_round <= valid_round or self.locked_value_id == value_id

    def _lock_on_polka(self) -> bool:
        """Line 36: the proposal of this round with 2f+1 prevotes for it, the first time."""
        if self.step is Step.PROPOSE or (36, self.round) in self._fired:
            return False
        for value_id, proposal in self._proposals(self.round):
            if self._validity.get(value_id) and self._has_polka(self.round, value_id):
                self._fired.add((36, self.round))
                # lines 42-43 before 38-41, so that one persisted state carries both
                self.valid_value, self.valid_value_id = proposal.value, value_id  # line 42
                self.valid_round = self.round  # line 43
                if self.step is Step.PREVOTE:  # line 37
                    self.locked_value_id = value_id  # line 38
                    self.locked_round = self.round  # line 39
                    self._vote(VoteKind.PRECOMMIT, value_id)  # line 40
                    self.step = Step.PRECOMMIT  # line 41
                else:
                    self._save(None)
                return True
        return False

    def _precommit_nil_on_polka(self) -> bool:
        """Line 44: 2f+1 prevotes for nil."""
        if self.step is not Step.PREVOTE or not self._has_polka(self.round, None):
            return False
        self._vote(VoteKind.PRECOMMIT, None)  # line 45
        self.step = Step.PRECOMMIT  # line 46
        return True

    def _schedule_prevote_timeout(self) -> bool:
        """Line 34: 2f+1 prevotes for anything in this round, the first time."""
        round_log = self._log().rounds.get(self.round)
        if (
            self.step is not Step.PREVOTE
            or (34, self.round) in self._fired
            or round_log is None
            or not self.validators.is_quorum(round_log.prevotes.power)
        ):
            return False
        self._fired.add((34, self.round))
        self._schedule(Step.PREVOTE)  # line 35
        return True

    def _schedule_precommit_timeout(self) -> bool:
        """Line 47: 2f+1 precommits for anything in this round, the first time."""
        round_log = self._log().rounds.get(self.round)
        if (
            (47, self.round) in self._fired
            or round_log is None
            or not self.validators.is_quorum(round_log.precommits.power)
        ):
            return False
        self._fired.add((47, self.round))
        self._schedule(Step.PRECOMMIT)  # line 48
        return True

    # ---- actions ---------------------------------------------------------------------
    def _start_round(self, round_: int) -> None:
        """Line 11."""
        self.round = round_  # line 12
        self.step = Step.PROPOSE  # line 13
        if self._is_proposer():  # line 14
            if self.valid_value is not None:  # line 15
                self._propose(self.valid_value, self.valid_round)  # lines 16 and 19
            else:
                self._effects.append(RequestValue(self.height, round_))  # line 18
        self._schedule(Step.PROPOSE)  # line 21, and for the proposer: see the module doc

    def _propose(self, value: bytes, valid_round: int) -> None:
        """Line 19. Our own value is valid: the driver built it, or we saw it valid."""
        if not self._may_sign(Step.PROPOSE):
            return
        value_id = self._value_id(value)
        self._validity[value_id] = True
        message = proposal_signing_bytes(
            self.network, self.height, self.round, valid_round, value_id
        )
        proposal = Proposal(
            self.network.chain_id,
            self.height,
            self.round,
            valid_round,
            value,
            self.me,
            self._sign(message),
        )
        self._send(proposal, Step.PROPOSE)
        self._store_proposal(proposal, value_id)

    def _vote(self, kind: VoteKind, value_id: bytes | None) -> None:
        if not self._may_sign(kind.step):
            return
        message = vote_signing_bytes(kind, self.network, self.height, self.round, value_id)
        vote = Vote(
            kind,
            self.network.chain_id,
            self.height,
            self.round,
            value_id,
            self.me,
            self._sign(message),
        )
        self._send(vote, kind.step)
        self._store_vote(vote)

    def _may_sign(self, step: Step) -> bool:
        saved = self.signing_state
        return saved is None or saved.allows(self.height, self.round, step)

    def _send(self, message: Message, step: Step) -> None:
        """Persist what we sign, then broadcast. The caller stores the message in our own
        log too: the paper's broadcast includes the sender."""
        self._save(step)
        self._effects.append(Broadcast(message))

    def _save(self, signed: Step | None) -> None:
        """Emit the signing state: ``signed`` is the step we sign at now, None keeps the last
        signed step (in the precommit step we signed, or were refused to sign, a precommit of
        this round, so there is one); lock and valid value are taken as they are now."""
        if signed is None:
            assert self.signing_state is not None
            last = self.signing_state
            height, round_, step = last.height, last.round, last.step
        else:
            height, round_, step = self.height, self.round, signed
        self.signing_state = SigningState(
            height,
            round_,
            step,
            self.locked_round,
            self.locked_value_id,
            self.valid_round,
            self.valid_value_id,
        )
        self._effects.append(PersistSigningState(self.signing_state))

    def _schedule(self, step: Step) -> None:
        delay = self.timeouts.duration_ms(step, self.round)
        self._effects.append(ScheduleTimeout(Timeout(step, self.height, self.round), delay))

    # ---- helpers ---------------------------------------------------------------------
    def _log(self, height: int | None = None) -> _HeightLog:
        height = self.height if height is None else height
        log = self._logs.get(height)
        if log is None:
            log = self._logs[height] = _HeightLog()
        return log

    def _proposals(self, round_: int) -> Iterator[tuple[bytes, Proposal]]:
        round_log = self._log().rounds.get(round_)
        return iter(round_log.proposals.items()) if round_log else iter(())

    def _has_polka(self, round_: int, value_id: bytes | None) -> bool:
        """2f+1 prevotes for ``value_id`` (nil when None) in ``round_``."""
        round_log = self._log().rounds.get(round_)
        return round_log is not None and self.validators.is_quorum(
            round_log.prevotes.power_for.get(value_id, 0)
        )

    def _is_proposer(self) -> bool:
        return self.validators.proposer(self.height, self.round) == self.me

    def _take_effects(self) -> list[Effect]:
        effects, self._effects = self._effects, []
        return effects
