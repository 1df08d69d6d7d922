"""Tendermint among four validators in the deterministic simulation (tests/consensus_sim.py):
safety on every commit and liveness once the faults stop, over many seeds; then proof that
the checks can fail.

QNET_SIM_SEEDS=N runs N seeds (a soak run); QNET_SIM_SEED=S replays seed S alone.
"""

import os
from collections import Counter
from dataclasses import replace

import pytest

from consensus_sim import (
    CHAIN_ID,
    NETWORK,
    NEW_HEIGHTS,
    REPLAY,
    LivenessViolation,
    LockIgnoringCore,
    Payload,
    SafetyViolation,
    SimConfig,
    SimResult,
    Simulation,
    SimulationFailure,
    SimValidator,
    run,
    value_id,
)
from qnet import crypto
from qnet.tendermint import (
    Accepted,
    Forgotten,
    Message,
    Proposal,
    Refused,
    Vote,
    VoteKind,
    decode_message,
    sender,
    vote_signing_bytes,
)

DEFAULT_SEEDS = 150  # about 0.17 s each on one core
SANITY_SEEDS = range(100)


def seeds() -> list[int]:
    if "QNET_SIM_SEED" in os.environ:
        return [int(os.environ["QNET_SIM_SEED"])]
    return list(range(int(os.environ.get("QNET_SIM_SEEDS", DEFAULT_SEEDS))))


@pytest.mark.parametrize("seed", seeds())
def test_safety_and_liveness_under_faults(seed):
    """Safety and liveness failures raise with the seed and the replay command."""
    result = run(seed)
    assert result.steps >= 2000, f"seed {seed} simulated only {result.steps} events"
    assert result.evidence > 0, f"seed {seed}: the Byzantine validator was never caught"
    honest_heights = [h for i, h in enumerate(result.heights) if i != SimConfig().byzantine]
    assert min(honest_heights) >= result.stable_height + NEW_HEIGHTS


def test_a_seed_replays_exactly():
    first, again = run(3), run(3)
    assert first == again
    assert run(4).trace != first.trace


def first_failure(config: SimConfig) -> SimulationFailure | None:
    for seed in SANITY_SEEDS:
        try:
            run(seed, config)
        except SimulationFailure as failure:
            return failure
    return None


def test_the_checker_catches_a_core_that_ignores_its_locks():
    failure = first_failure(SimConfig(core=LockIgnoringCore))
    assert isinstance(failure, SafetyViolation), "unsafe core passed every seed"
    assert "committed different values" in str(failure)
    assert REPLAY.format(seed=failure.seed) in str(failure)


def test_the_checker_catches_double_signing_after_a_restart_without_the_signing_state():
    failure = first_failure(SimConfig(keep_signing_state=False))
    assert isinstance(failure, SafetyViolation)
    assert "equivocated" in str(failure)


def test_liveness_after_restarts_needs_the_log_of_consensus_messages():
    failure = first_failure(SimConfig(keep_message_log=False))
    assert isinstance(failure, LivenessViolation)


def test_the_liveness_check_fails_without_a_quorum():
    with pytest.raises(LivenessViolation, match="did not commit"):
        run(0, SimConfig(byzantine=None, stay_down=(0, 1)))


# ---- hostile senders -------------------------------------------------------------------------
# The same simulation with two more kinds of attacker, as a validator open to strangers
# meets them: a sender that is not a validator (it floods votes and proposals signed by its
# own key, forges others' signatures, and claims far rounds and heights), and the Byzantine
# validator flooding on top of its equivocation (votes for values nobody proposed, in the
# current and later rounds). The driver keeps (and would log and relay) only what the core
# accepts; the checks add that nothing forged or unsigned is ever kept and that what the
# core buffers stays within its limits, per height, round and sender.

OUTSIDER = -1  # the stranger's source index: it is no validator
HOSTILE_SEEDS = 20
FLOOD_EVERY_MS = 250
FLOOD_SIZE = 6  # messages per flood and honest target, for each attacker


class HostileSimulation(Simulation):
    def __init__(self, seed: int, config: SimConfig | None = None):
        super().__init__(seed, config)
        self.outsider = crypto.KeyPair(crypto.digest(f"sim {seed} outsider".encode()))
        self.kept = 0  # messages the honest validators' cores accepted
        self.refused: Counter[str] = Counter()

    def run(self) -> SimResult:
        self._at(1, self._flood)
        return super().run()

    def _flood(self) -> None:
        byzantine = next(n for n in self.nodes if n.byzantine)
        for node in self.honest:
            if node.core is None:
                continue
            height, round_ = node.core.height, node.core.round
            for _ in range(FLOOD_SIZE):
                self._deliver_later(OUTSIDER, node, self._stranger_message(height, round_))
                self._deliver_later(byzantine.index, node, self._byzantine_flood(height, round_))
        self._at(self.now + FLOOD_EVERY_MS, self._flood)

    def _deliver_later(self, src: int, node: SimValidator, message: Message) -> None:
        self._at(
            self.now + self.rng.randint(1, 50), self._deliver, src, node.index, message.encode()
        )

    def _stranger_message(self, height: int, round_: int) -> Message:
        rng = self.rng
        choice = rng.randrange(5)
        target = rng.choice((None, rng.randbytes(32)))
        far_round = round_ + rng.randint(0, 1000)
        if choice == 0:  # its own signature: not a validator
            return self._vote_by(self.outsider, height, round_, target)
        if choice == 1:  # a validator's name, a signature by nobody
            who = rng.choice(self.nodes).key.public_key
            vote = self._vote_by(self.outsider, height, far_round, target)
            return replace(vote, validator=who)
        if choice == 2:  # a proposal in the proposer's name, badly signed
            proposer = self.validator_set.proposer(height, round_)
            value = b"v" + rng.randbytes(15)
            return Proposal(CHAIN_ID, height, round_, -1, value, proposer, rng.randbytes(64))
        if choice == 3:  # far heights, in a validator's name
            who = rng.choice(self.nodes).key.public_key
            vote = self._vote_by(self.outsider, height + rng.randint(2, 2**40), 0, target)
            return replace(vote, validator=who)
        key = rng.choice(self.nodes).key  # replayed on another chain
        vote = self._vote_by(key, height, round_, target)
        return replace(vote, chain_id="qnet-other")

    def _byzantine_flood(self, height: int, round_: int) -> Message:
        """Validly signed votes of the Byzantine validator for values nobody proposed, in
        this round and far ones: more than the core keeps of any one validator."""
        rng = self.rng
        byzantine = next(n for n in self.nodes if n.byzantine)
        target_round = round_ + rng.choice((0, 0, 1, rng.randint(2, 500)))
        return self._vote_by(
            byzantine.key, height + rng.randint(0, 1), target_round, rng.randbytes(32)
        )

    def _vote_by(self, key: crypto.KeyPair, height: int, round_: int, target: bytes | None) -> Vote:
        kind = self.rng.choice((VoteKind.PREVOTE, VoteKind.PRECOMMIT))
        signed = vote_signing_bytes(kind, NETWORK, height, round_, target)
        return Vote(kind, CHAIN_ID, height, round_, target, key.public_key, key.sign(signed))

    def _deliver(self, src: int, dst: int, payload: Payload) -> None:
        """The driver's rule: keep (log, relay) only what the core accepted."""
        node = self.nodes[dst]
        if node.core is None or not isinstance(payload, bytes):
            super()._deliver(src, dst, payload)
            return
        message = decode_message(payload)
        if node.byzantine and src != OUTSIDER:
            self._back(node, src, message)
        effects = node.core.on_message(message)
        for effect in effects:
            if isinstance(effect, Accepted):
                self._check_kept(node, message)
                node.known[payload] = message.height
            elif isinstance(effect, Refused) and not node.byzantine:
                self.refused[effect.reason] += 1
            elif isinstance(effect, Forgotten):
                for gone in effect.messages:
                    node.known.pop(gone.encode(), None)
        self._execute(node, effects)
        if not node.byzantine:
            self._check_bounded(node)

    def _check_kept(self, node: SimValidator, message: Message) -> None:
        who = sender(message)
        if isinstance(message, Proposal):
            signed = message.signing_bytes(NETWORK, value_id(message.value))
        else:
            signed = message.signing_bytes(NETWORK)
        if (
            who not in self.validator_set
            or message.chain_id != CHAIN_ID
            or not crypto.verify(who, message.signature, signed)
        ):
            self.fail(SafetyViolation, f"validator {node.index} kept a forged {message}")
        self.kept += not node.byzantine

    def _check_bounded(self, node: SimValidator) -> None:
        core = node.core
        limits = core.limits
        for height, height_log in core._logs.items():
            if height > core.height + limits.future_heights:
                self.fail(SafetyViolation, f"validator {node.index} buffers height {height}")
            current = core.round if height == core.height else 0
            for rounds in height_log.rounds_of.values():
                if len([r for r in rounds if r > current]) > limits.future_rounds:
                    self.fail(
                        SafetyViolation,
                        f"validator {node.index} keeps {sorted(rounds)} rounds of one sender",
                    )
            for round_log in height_log.rounds.values():
                if len(round_log.proposals) > limits.proposals_per_round:
                    self.fail(SafetyViolation, f"validator {node.index}: too many proposals")
                for tally in (round_log.prevotes, round_log.precommits):
                    if any(len(v) > limits.votes_per_step for v in tally.votes.values()):
                        self.fail(SafetyViolation, f"validator {node.index}: too many votes")


def hostile_seeds() -> list[int]:
    if "QNET_SIM_SEED" in os.environ:
        return [int(os.environ["QNET_SIM_SEED"])]
    return list(range(int(os.environ.get("QNET_SIM_SEEDS", HOSTILE_SEEDS))))


@pytest.mark.parametrize("seed", hostile_seeds())
def test_safety_and_liveness_hold_against_a_stranger_and_a_flooding_validator(seed):
    simulation = HostileSimulation(seed)
    result = simulation.run()
    honest_heights = [h for i, h in enumerate(result.heights) if i != SimConfig().byzantine]
    assert min(honest_heights) >= result.stable_height + NEW_HEIGHTS
    assert result.evidence > 0
    refused = simulation.refused
    for reason in ("not_validator", "bad_signature", "wrong_chain", "far_future"):
        assert refused[reason] > 0, f"seed {seed}: no {reason} refusal in {dict(refused)}"
    assert refused["round_limit"] + refused["vote_limit"] > 0


def test_the_hostile_checks_catch_a_driver_that_keeps_what_the_core_refused():
    class Careless(HostileSimulation):
        def _deliver(self, src: int, dst: int, payload: Payload) -> None:
            node = self.nodes[dst]
            if node.core is not None and isinstance(payload, bytes) and not node.byzantine:
                self._check_kept(node, decode_message(payload))  # kept before any check
            super()._deliver(src, dst, payload)

    with pytest.raises(SafetyViolation, match="kept a forged"):
        Careless(0).run()
