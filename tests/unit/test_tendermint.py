"""The Tendermint core rule by rule (paper line numbers in the test names), its encodings,
proposer rotation, restart guard and buffering. Real Ed25519 keys and signatures throughout."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qnet import crypto
from qnet.block import TAG_PRECOMMIT, CommitCertificate, precommit_message
from qnet.tendermint import (
    NIL_ID,
    TAG_PREVOTE,
    TAG_PROPOSAL,
    Accepted,
    Broadcast,
    Core,
    Decide,
    Effect,
    Equivocation,
    Forgotten,
    Limits,
    Message,
    MessageError,
    PersistSigningState,
    Proposal,
    Refused,
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
    vote_signing_bytes,
)

CHAIN = "qnet-test"
GENESIS_HASH = b"\x47" * 32
NETWORK = crypto.Network(CHAIN, GENESIS_HASH)
H = 5
KEYS = [crypto.KeyPair(bytes([i + 1]) * 32) for i in range(4)]
BY_KEY = {k.public_key: k for k in KEYS}
EQUAL = ValidatorSet({k.public_key: 1 for k in KEYS})
TIMEOUTS = Timeouts(
    propose_ms=100,
    propose_delta_ms=10,
    prevote_ms=50,
    prevote_delta_ms=5,
    precommit_ms=60,
    precommit_delta_ms=6,
)
A, B = b"block A", b"block B"
PREVOTE, PRECOMMIT = VoteKind.PREVOTE, VoteKind.PRECOMMIT


def vid(value: bytes) -> bytes:
    return crypto.digest(value)


def proposer(round_: int, height: int = H, validators: ValidatorSet = EQUAL) -> crypto.KeyPair:
    return BY_KEY[validators.proposer(height, round_)]


# With four equal validators rotating over height + round, the proposer of round 3 proposes
# in none of rounds 0-2: the validator under test, so that it only reacts.
ME = proposer(3)
OTHERS = [k for k in KEYS if k is not ME]


def make_core(key: crypto.KeyPair = ME, validators: ValidatorSet = EQUAL, **kw) -> Core:
    return Core(
        network=NETWORK,
        validators=validators,
        me=key.public_key,
        sign=key.sign,
        verify=crypto.verify,
        value_id=vid,
        timeouts=TIMEOUTS,
        **kw,
    )


def vote(
    key: crypto.KeyPair,
    kind: VoteKind,
    round_: int,
    value: bytes | None,
    height: int = H,
    network: crypto.Network = NETWORK,
) -> Vote:
    value_id = None if value is None else vid(value)
    signature = key.sign(vote_signing_bytes(kind, network, height, round_, value_id))
    return Vote(kind, network.chain_id, height, round_, value_id, key.public_key, signature)


def proposal(
    round_: int,
    value: bytes,
    valid_round: int = -1,
    height: int = H,
    key: crypto.KeyPair | None = None,
    network: crypto.Network = NETWORK,
) -> Proposal:
    key = key or proposer(round_, height)
    signed = proposal_signing_bytes(network, height, round_, valid_round, vid(value))
    return Proposal(
        network.chain_id, height, round_, valid_round, value, key.public_key, key.sign(signed)
    )


def feed(core: Core, *messages: Message) -> list[Effect]:
    return [e for m in messages for e in core.on_message(m)]


def actions(effects: list[Effect]) -> list[Effect]:
    """The effects but the verdicts on the message given (Accepted, Refused)."""
    return [e for e in effects if not isinstance(e, Accepted | Refused)]


def refusals(effects: list[Effect]) -> list[str]:
    return [e.reason for e in effects if isinstance(e, Refused)]


def sent(effects: list[Effect]) -> list[Message]:
    return [e.message for e in effects if isinstance(e, Broadcast)]


def votes_sent(effects: list[Effect], kind: VoteKind) -> list[bytes | None]:
    return [m.value_id for m in sent(effects) if isinstance(m, Vote) and m.kind is kind]


def timeouts(effects: list[Effect]) -> list[ScheduleTimeout]:
    return [e for e in effects if isinstance(e, ScheduleTimeout)]


def accept(core: Core, prop: Proposal, valid: bool = True) -> list[Effect]:
    """Deliver a proposal and answer the validity question it raises."""
    effects = core.on_message(prop)
    assert ValidateValue(prop.height, vid(prop.value), prop.value) in effects
    return effects + core.on_validity(prop.height, vid(prop.value), valid)


def started(**kw) -> Core:
    core = make_core(**kw)
    core.start_height(H)
    return core


def locked_on_a_in_round_0() -> Core:
    core = started()
    accept(core, proposal(0, A))
    feed(core, *(vote(k, PREVOTE, 0, A) for k in OTHERS[:2]))
    assert core.locked_round == 0
    return core


# ---- StartRound (line 11) and the propose step -------------------------------------------


def test_proposer_asks_for_a_value_proposes_it_and_prevotes_it():
    key = proposer(0)
    core = make_core(key)
    effects = core.start_height(H)
    assert RequestValue(H, 0) in effects  # line 18
    effects = core.on_value(H, 0, A)
    messages = sent(effects)
    assert isinstance(messages[0], Proposal) and messages[0].value == A  # line 19
    assert messages[0].valid_round == -1
    signed = messages[0].signing_bytes(NETWORK, vid(A))
    assert crypto.verify(key.public_key, messages[0].signature, signed)
    assert votes_sent(effects, PREVOTE) == [vid(A)]  # line 22 on its own proposal
    assert isinstance(effects[0], PersistSigningState)  # durable before anything is sent


def test_a_non_proposer_waits_for_the_proposal_with_a_timeout():
    core = make_core()
    effects = core.start_height(H)
    assert effects == [ScheduleTimeout(Timeout(Step.PROPOSE, H, 0), 100)]  # line 21


def test_a_value_that_arrives_after_the_propose_timeout_is_not_proposed():
    core = make_core(proposer(0))
    core.start_height(H)
    core.on_timeout(Timeout(Step.PROPOSE, H, 0))  # line 57: prevote nil
    assert core.step is Step.PREVOTE
    assert sent(core.on_value(H, 0, A)) == []


def test_line_22_prevotes_a_valid_proposal_only_once_validity_is_known():
    core = started()
    effects = core.on_message(proposal(0, A))
    assert votes_sent(effects, PREVOTE) == []
    assert votes_sent(core.on_validity(H, vid(A), True), PREVOTE) == [vid(A)]
    assert core.step is Step.PREVOTE


def test_line_22_prevotes_nil_for_an_invalid_proposal():
    core = started()
    assert votes_sent(accept(core, proposal(0, A), valid=False), PREVOTE) == [None]


def test_line_57_prevotes_nil_when_the_proposal_does_not_come():
    core = started()
    assert votes_sent(core.on_timeout(Timeout(Step.PROPOSE, H, 0)), PREVOTE) == [None]
    assert core.on_timeout(Timeout(Step.PROPOSE, H, 0)) == []  # once


def test_a_proposal_from_the_wrong_proposer_is_ignored():
    core = started()
    intruder = next(k for k in OTHERS if k is not proposer(0))
    assert refusals(core.on_message(proposal(0, A, key=intruder))) == ["not_proposer"]
    assert core.dropped["not_proposer"] == 1


# ---- locking (lines 36-43) and the lock rules of lines 23 and 29 -------------------------


def test_line_36_locks_and_precommits_on_a_polka_for_the_proposal():
    core = started()
    accept(core, proposal(0, A))
    effects = core.on_message(vote(OTHERS[0], PREVOTE, 0, A))  # 2 of 4: no polka yet
    assert votes_sent(effects, PRECOMMIT) == []
    effects = core.on_message(vote(OTHERS[1], PREVOTE, 0, A))  # 3 of 4
    assert votes_sent(effects, PRECOMMIT) == [vid(A)]
    assert (core.locked_round, core.locked_value_id) == (0, vid(A))
    assert (core.valid_round, core.valid_value) == (0, A)
    saved = [e.state for e in effects if isinstance(e, PersistSigningState)]
    assert saved[-1] == SigningState(H, 0, Step.PRECOMMIT, 0, vid(A), 0, vid(A))
    assert effects.index(PersistSigningState(saved[-1])) < effects.index(
        Broadcast(sent(effects)[0])
    )


def test_line_36_without_the_proposal_neither_locks_nor_precommits():
    core = started()
    core.on_timeout(Timeout(Step.PROPOSE, H, 0))
    effects = feed(core, *(vote(k, PREVOTE, 0, A) for k in OTHERS))
    assert votes_sent(effects, PRECOMMIT) == [] and core.locked_round == -1


def test_line_22_a_locked_validator_prevotes_nil_for_another_value():
    core = locked_on_a_in_round_0()
    core.on_timeout(Timeout(Step.PRECOMMIT, H, 0))  # line 65: round 1
    assert votes_sent(accept(core, proposal(1, B)), PREVOTE) == [None]


def test_line_22_a_locked_validator_prevotes_its_locked_value_again():
    core = locked_on_a_in_round_0()
    core.on_timeout(Timeout(Step.PRECOMMIT, H, 0))
    assert votes_sent(core.on_message(proposal(1, A)), PREVOTE) == [vid(A)]  # valid: known


def _locked_on_a_with_a_polka_for_b_in_round_1() -> Core:
    core = locked_on_a_in_round_0()
    core.on_timeout(Timeout(Step.PRECOMMIT, H, 0))
    core.on_timeout(Timeout(Step.PROPOSE, H, 1))  # no proposal in round 1: prevote nil
    feed(core, *(vote(k, PREVOTE, 1, B) for k in OTHERS))  # a polka for B we cannot use
    core.on_timeout(Timeout(Step.PREVOTE, H, 1))
    core.on_timeout(Timeout(Step.PRECOMMIT, H, 1))
    assert (core.round, core.locked_round) == (2, 0)
    return core


def test_line_28_prevotes_a_value_whose_polka_is_newer_than_the_lock():
    core = _locked_on_a_with_a_polka_for_b_in_round_1()
    assert votes_sent(accept(core, proposal(2, B, valid_round=1)), PREVOTE) == [vid(B)]


def test_line_28_needs_the_polka_of_the_valid_round():
    core = locked_on_a_in_round_0()
    core.on_timeout(Timeout(Step.PRECOMMIT, H, 0))
    core.on_timeout(Timeout(Step.PROPOSE, H, 1))
    core.on_timeout(Timeout(Step.PREVOTE, H, 1))
    core.on_timeout(Timeout(Step.PRECOMMIT, H, 1))
    assert votes_sent(accept(core, proposal(2, B, valid_round=1)), PREVOTE) == []
    assert votes_sent(core.on_timeout(Timeout(Step.PROPOSE, H, 2)), PREVOTE) == [None]


def test_line_29_a_polka_older_than_the_lock_gets_a_nil_prevote():
    core = started()
    core.on_timeout(Timeout(Step.PROPOSE, H, 0))
    feed(core, *(vote(k, PREVOTE, 0, B) for k in OTHERS))  # a polka for B in round 0
    core.on_timeout(Timeout(Step.PREVOTE, H, 0))
    core.on_timeout(Timeout(Step.PRECOMMIT, H, 0))
    accept(core, proposal(1, A))
    feed(core, *(vote(k, PREVOTE, 1, A) for k in OTHERS[:2]))
    core.on_timeout(Timeout(Step.PRECOMMIT, H, 1))
    assert (core.round, core.locked_round) == (2, 1)
    assert votes_sent(accept(core, proposal(2, B, valid_round=0)), PREVOTE) == [None]  # line 32


def test_a_proposer_with_a_valid_value_proposes_it_with_its_valid_round():
    key = proposer(1)
    core = make_core(key)
    core.start_height(H)
    accept(core, proposal(0, A))
    feed(core, *(vote(k, PREVOTE, 0, A) for k in KEYS if k is not key))
    effects = core.on_timeout(Timeout(Step.PRECOMMIT, H, 0))
    props = [m for m in sent(effects) if isinstance(m, Proposal)]
    assert [(p.round, p.value, p.valid_round) for p in props] == [(1, A, 0)]  # lines 15-16
    assert not any(isinstance(e, RequestValue) for e in effects)


# ---- the prevote and precommit steps -----------------------------------------------------


def test_line_34_schedules_the_prevote_timeout_once_and_line_61_precommits_nil():
    core = started()
    core.on_timeout(Timeout(Step.PROPOSE, H, 0))  # prevote nil
    effects = feed(core, vote(OTHERS[0], PREVOTE, 0, A), vote(OTHERS[1], PREVOTE, 0, B))
    assert [t.timeout for t in timeouts(effects)] == [Timeout(Step.PREVOTE, H, 0)]
    assert timeouts(core.on_message(vote(OTHERS[2], PREVOTE, 0, A))) == []
    assert votes_sent(core.on_timeout(Timeout(Step.PREVOTE, H, 0)), PRECOMMIT) == [None]
    assert core.step is Step.PRECOMMIT


def test_line_44_precommits_nil_on_a_polka_for_nil():
    core = started()
    core.on_timeout(Timeout(Step.PROPOSE, H, 0))
    effects = feed(core, *(vote(k, PREVOTE, 0, None) for k in OTHERS[:2]))
    assert votes_sent(effects, PRECOMMIT) == [None]


def test_line_47_schedules_the_precommit_timeout_and_line_65_starts_the_next_round():
    core = started()
    effects = feed(
        core,
        vote(OTHERS[0], PRECOMMIT, 0, A),
        vote(OTHERS[1], PRECOMMIT, 0, None),
        vote(OTHERS[2], PRECOMMIT, 0, B),
    )
    assert [t.timeout for t in timeouts(effects)] == [Timeout(Step.PRECOMMIT, H, 0)]
    effects = core.on_timeout(Timeout(Step.PRECOMMIT, H, 0))
    assert (core.round, core.step) == (1, Step.PROPOSE)
    assert timeouts(effects) == [ScheduleTimeout(Timeout(Step.PROPOSE, H, 1), 110)]


def test_stale_timeouts_are_ignored():
    core = started()
    core.on_timeout(Timeout(Step.PRECOMMIT, H, 0))
    assert core.on_timeout(Timeout(Step.PROPOSE, H, 0)) == []
    assert core.on_timeout(Timeout(Step.PRECOMMIT, H - 1, 1)) == []
    assert (core.round, core.step) == (1, Step.PROPOSE)


# ---- round skipping (line 55) ------------------------------------------------------------


def test_line_55_needs_f_plus_1_messages_of_a_higher_round():
    core = started()
    first = vote(OTHERS[0], PREVOTE, 4, A)
    assert core.on_message(first) == [Accepted(first)]  # 1 of 4: maybe Byzantine
    core.on_message(vote(OTHERS[1], PRECOMMIT, 7, None))
    assert core.round == 0
    effects = core.on_message(vote(OTHERS[2], PREVOTE, 7, None))  # 2 of 4 in round 7
    assert core.round == 7
    assert ScheduleTimeout(Timeout(Step.PROPOSE, H, 7), 170) in effects


def test_line_55_counts_a_proposal_as_a_message_of_its_round():
    core = started()
    core.on_message(proposal(2, A))
    assert core.round == 0
    core.on_message(vote(next(k for k in OTHERS if k is not proposer(2)), PREVOTE, 2, None))
    assert core.round == 2


def test_timeouts_grow_linearly_with_the_round():
    t = Timeouts(
        propose_ms=3000,
        propose_delta_ms=500,
        prevote_ms=1000,
        prevote_delta_ms=250,
        precommit_ms=1000,
        precommit_delta_ms=100,
    )
    assert [t.duration_ms(Step.PROPOSE, r) for r in range(4)] == [3000, 3500, 4000, 4500]
    assert t.duration_ms(Step.PREVOTE, 10) == 3500
    assert t.duration_ms(Step.PRECOMMIT, 10) == 2000


# ---- decision (line 49) ------------------------------------------------------------------

WEIGHTED_KEYS = KEYS[:4]
WEIGHTED = ValidatorSet(
    {
        WEIGHTED_KEYS[0].public_key: 2,
        WEIGHTED_KEYS[1].public_key: 2,
        WEIGHTED_KEYS[2].public_key: 1,
        WEIGHTED_KEYS[3].public_key: 1,
    }
)


def test_decision_needs_more_than_two_thirds_of_the_power():
    heavy = [k for k in WEIGHTED_KEYS if WEIGHTED.powers[k.public_key] == 2]
    light = [k for k in WEIGHTED_KEYS if WEIGHTED.powers[k.public_key] == 1]
    me = next(k for k in light if k is not proposer(0, validators=WEIGHTED))
    core = make_core(me, validators=WEIGHTED)
    core.start_height(H)
    accept(core, proposal(0, A, key=proposer(0, validators=WEIGHTED)))
    effects = feed(core, *(vote(k, PRECOMMIT, 0, A) for k in heavy))  # 4 of 6: exactly 2/3
    assert not any(isinstance(e, Decide) for e in effects) and core.decision is None
    other_light = next(k for k in light if k is not me)
    effects = core.on_message(vote(other_light, PRECOMMIT, 0, A))  # 5 of 6
    [decide] = [e for e in effects if isinstance(e, Decide)]
    assert (decide.height, decide.round, decide.value) == (H, 0, A)
    cert = decide.certificate
    cert.verify(NETWORK, WEIGHTED.powers)  # a block.CommitCertificate as it is
    assert CommitCertificate.decode(cert.encode()) == cert
    assert [pk for pk, _ in cert.signatures] == sorted(k.public_key for k in [*heavy, other_light])


def test_line_49_decides_on_the_precommits_of_an_earlier_round():
    core = started()
    core.on_timeout(Timeout(Step.PRECOMMIT, H, 0))
    core.on_timeout(Timeout(Step.PRECOMMIT, H, 1))
    accept(core, proposal(0, A))
    effects = feed(core, *(vote(k, PRECOMMIT, 0, A) for k in OTHERS))
    assert [e.round for e in effects if isinstance(e, Decide)] == [0]
    assert core.on_timeout(Timeout(Step.PRECOMMIT, H, 2)) == []  # decided: nothing more


def test_line_50_never_decides_an_invalid_value():
    core = started()
    accept(core, proposal(0, A), valid=False)
    effects = feed(core, *(vote(k, PRECOMMIT, 0, A) for k in OTHERS))
    assert not any(isinstance(e, Decide) for e in effects)


def test_after_deciding_the_core_waits_for_the_driver_to_start_the_next_height():
    core = started()
    accept(core, proposal(0, A))
    feed(core, *(vote(k, PRECOMMIT, 0, A) for k in OTHERS))
    assert core.decision == A and core.height == H
    assert refusals(core.on_message(vote(OTHERS[0], PREVOTE, 1, B))) == ["past_height"]
    assert core.dropped["past_height"] == 1
    core.start_height(H + 1)
    assert (core.height, core.round, core.decision, core.locked_round) == (H + 1, 0, None, -1)
    with pytest.raises(ValueError, match="not above"):
        core.start_height(H)


# ---- buffering ---------------------------------------------------------------------------


def test_messages_of_the_next_height_are_buffered_and_used_after_start_height():
    core = started()
    next_prop = proposal(0, B, height=H + 1)
    effects = feed(core, next_prop, *(vote(k, PREVOTE, 0, B, height=H + 1) for k in OTHERS))
    assert actions(effects) == []  # not validated yet: its parent is not committed
    assert [type(e) for e in effects] == [Accepted] * 4  # but kept
    assert refusals(core.on_message(vote(OTHERS[0], PREVOTE, 0, B, height=H + 2))) == ["far_future"]
    assert core.dropped["far_future"] == 1
    effects = core.start_height(H + 1)
    assert ValidateValue(H + 1, vid(B), B) in effects
    effects = core.on_validity(H + 1, vid(B), True)
    assert votes_sent(effects, PREVOTE) == [vid(B)]
    assert votes_sent(effects, PRECOMMIT) == [vid(B)]  # the buffered polka
    assert refusals(core.on_message(vote(OTHERS[0], PREVOTE, 0, A))) == ["past_height"]
    assert core.dropped["past_height"] == 1


def test_each_validator_keeps_only_its_highest_future_rounds():
    core = make_core(limits=Limits(future_rounds=2))
    core.start_height(H)
    spammer, honest = OTHERS[0], OTHERS[1]
    feed(core, *(vote(spammer, PREVOTE, r, None) for r in (10, 20, 30)))
    assert refusals(core.on_message(vote(spammer, PREVOTE, 15, None))) == ["round_limit"]
    assert core.dropped["round_limit"] == 1  # lower than the two it keeps (20 and 30)
    core.on_message(vote(honest, PREVOTE, 10, None))
    assert core.round == 0  # round 10 of the spammer was evicted
    core.on_message(vote(honest, PREVOTE, 30, None))
    assert core.round == 30


# ---- ignored messages and equivocation ---------------------------------------------------


def test_bad_signatures_wrong_chains_and_strangers_are_ignored():
    core = started()
    core.on_timeout(Timeout(Step.PROPOSE, H, 0))
    good = vote(OTHERS[0], PREVOTE, 0, A)
    forged = Vote(PREVOTE, CHAIN, H, 0, vid(A), OTHERS[1].public_key, good.signature)
    other_chain = vote(OTHERS[1], PREVOTE, 0, A, network=crypto.Network("another", GENESIS_HASH))
    # The same chain id and keys, another genesis (a reset testnet): the chain id matches,
    # the signature does not.
    reset = crypto.Network(CHAIN, b"\x48" * 32)
    old_vote = vote(OTHERS[2], PREVOTE, 0, A, network=reset)
    old_proposal = proposal(0, B, network=reset)
    stranger = vote(crypto.KeyPair(b"\x99" * 32), PREVOTE, 0, A)
    bad_proposal = Proposal(CHAIN, H, 0, -1, B, proposer(0).public_key, bytes(64))
    effects = feed(core, good, forged, other_chain, old_vote, old_proposal, stranger, bad_proposal)
    assert effects == [
        Accepted(good),
        Refused(forged, "bad_signature"),
        Refused(other_chain, "wrong_chain"),
        Refused(old_vote, "bad_signature"),
        Refused(old_proposal, "bad_signature"),
        Refused(stranger, "not_validator"),
        Refused(bad_proposal, "bad_signature"),
    ]
    assert dict(core.dropped) == {"bad_signature": 4, "wrong_chain": 1, "not_validator": 1}
    # only two validators prevoted (we and OTHERS[0]): line 34 has not fired
    assert timeouts(core.on_message(vote(OTHERS[2], PREVOTE, 0, A))) != []


def test_equivocation_is_reported_once_and_the_equivocator_counts_once_per_round():
    core = started()
    core.on_timeout(Timeout(Step.PROPOSE, H, 0))  # our prevote for nil
    liar, other = OTHERS[0], OTHERS[1]
    first, second = vote(liar, PREVOTE, 0, A), vote(liar, PREVOTE, 0, B)
    effects = feed(core, first, second)
    assert [e for e in effects if isinstance(e, Equivocation)] == [Equivocation(first, second)]
    third = vote(liar, PREVOTE, 0, None)
    effects = feed(core, second, third)
    assert effects == [Refused(second, "duplicate"), Accepted(third)]  # no second report
    assert core.dropped["duplicate"] == 1
    # we and the liar have prevoted: 2 of 4, however many votes the liar sent
    assert timeouts(core.on_message(vote(other, PREVOTE, 0, B))) != []


def test_an_equivocators_votes_count_for_each_value_it_voted_for():
    """Two correct validators that saw the liar's two votes in different orders still see
    the same polkas."""
    liar, x, _ = OTHERS
    for order in ((A, B), (B, A)):
        core = started()
        accept(core, proposal(0, B))  # we prevote B
        feed(core, *(vote(liar, PREVOTE, 0, v) for v in order))
        effects = core.on_message(vote(x, PREVOTE, 0, B))
        assert votes_sent(effects, PRECOMMIT) == [vid(B)], order


def test_an_equivocating_proposer_is_reported():
    core = started()
    effects = feed(core, proposal(0, A), proposal(0, B))
    assert [type(e) for e in effects].count(Equivocation) == 1


def test_a_flood_of_votes_for_unproposed_values_cannot_crowd_out_a_vote_that_matters():
    """An equivocator's votes are kept up to votes_per_step; those for values nobody
    proposed give way to one for a proposed value (or nil), so a validator that got the junk
    first still sees the polka the others saw."""
    core = started()
    liar, x, _ = OTHERS
    junk = [vote(liar, PREVOTE, 0, b"junk %d" % i) for i in range(5)]
    effects = feed(core, *junk)
    assert refusals(effects) == ["vote_limit", "vote_limit"]  # 3 kept, then full
    accept(core, proposal(0, A))  # we prevote A
    real = vote(liar, PREVOTE, 0, A)
    assert core.on_message(real)[0] == Accepted(real)  # a junk vote made room
    effects = core.on_message(vote(x, PREVOTE, 0, A))  # we, x and the liar: a polka
    assert votes_sent(effects, PRECOMMIT) == [vid(A)]
    # the proposed value and nil fill the room; junk no longer gets in
    assert refusals(core.on_message(vote(liar, PREVOTE, 0, b"more junk"))) == ["vote_limit"]


def test_a_flood_of_far_rounds_leaves_no_empty_rounds_behind():
    core = started()
    liar = OTHERS[0]
    feed(core, *(vote(liar, PREVOTE, r, None) for r in range(10, 1010)))
    rounds = sorted(core._log().rounds)
    assert rounds == [1007, 1008, 1009]  # the liar's future_rounds highest, nothing else
    effects = core.on_message(vote(liar, PREVOTE, 2000, None))
    assert Forgotten((vote(liar, PREVOTE, 1007, None),)) in effects  # for the driver too


# ---- restart: the signing state ----------------------------------------------------------


def test_a_restarted_validator_never_signs_a_step_again_and_keeps_its_lock():
    core = locked_on_a_in_round_0()
    saved = core.signing_state
    assert saved == SigningState(H, 0, Step.PRECOMMIT, 0, vid(A), 0, vid(A))
    assert SigningState.decode(saved.encode()) == saved

    restarted = make_core(signing_state=saved)
    restarted.start_height(H)
    assert (restarted.locked_round, restarted.locked_value_id) == (0, vid(A))
    effects = accept(restarted, proposal(0, B))  # would have been a second, different prevote
    assert sent(effects) == []
    restarted.on_timeout(Timeout(Step.PRECOMMIT, H, 0))
    effects = restarted.on_message(proposal(1, B))  # B is known valid from round 0
    assert votes_sent(effects, PREVOTE) == [None]  # still locked on A


def test_a_restarted_proposer_gets_its_valid_value_back_from_the_replayed_log():
    key = proposer(1)
    core = make_core(key)
    core.start_height(H)
    prop = proposal(0, A)
    accept(core, prop)
    feed(core, *(vote(k, PREVOTE, 0, A) for k in KEYS if k is not key))
    restarted = make_core(key, signing_state=core.signing_state)
    restarted.start_height(H)
    restarted.on_message(prop)  # the driver replays its log of this height
    effects = restarted.on_timeout(Timeout(Step.PRECOMMIT, H, 0))
    props = [m for m in sent(effects) if isinstance(m, Proposal)]
    assert [(p.value, p.valid_round) for p in props] == [(A, 0)]


# ---- proposer rotation -------------------------------------------------------------------


def test_equal_powers_rotate_round_robin_over_height_plus_round():
    order = sorted(k.public_key for k in KEYS)
    assert [EQUAL.proposer(0, r) for r in range(8)] == order * 2
    assert EQUAL.proposer(7, 2) == EQUAL.proposer(8, 1) == order[9 % 4]


def test_rotation_is_weighted_by_power_and_independent_of_listing_order():
    powers = {KEYS[0].public_key: 3, KEYS[1].public_key: 1, KEYS[2].public_key: 2}
    forward, backward = ValidatorSet(powers), ValidatorSet(dict(reversed(powers.items())))
    cycle = [forward.proposer(0, r) for r in range(6)]
    assert cycle == [backward.proposer(0, r) for r in range(6)]
    assert {pk: cycle.count(pk) for pk in powers} == powers
    assert [forward.proposer(3, r) for r in range(6)] == cycle[3:] + cycle[:3]
    heavy = KEYS[0].public_key
    assert all(
        cycle[i] != heavy or cycle[i + 1] != heavy or cycle[i + 2] != heavy for i in range(4)
    )  # spread out, not in one run


def test_validator_sets_are_checked():
    with pytest.raises(ValueError):
        ValidatorSet({})
    with pytest.raises(ValueError):
        ValidatorSet({KEYS[0].public_key: 0})
    with pytest.raises(ValueError, match="not a validator"):
        make_core(crypto.KeyPair(b"\x77" * 32))


# ---- encodings ---------------------------------------------------------------------------

FAST = settings(max_examples=50, deadline=None)
u64 = st.integers(min_value=0, max_value=2**64 - 1)
rounds = st.integers(min_value=0, max_value=2**32 - 1)
ids = st.binary(min_size=32, max_size=32).filter(lambda b: b != NIL_ID)
keys = st.sampled_from(KEYS)
chains = st.sampled_from([CHAIN, "q", "ünïcode-chain"])
networks = st.builds(crypto.Network, chains, st.binary(min_size=32, max_size=32))


@FAST
@given(st.sampled_from(list(VoteKind)), networks, u64, rounds, st.none() | ids, keys)
def test_votes_round_trip_and_verify(kind, network, height, round_, value_id, key):
    message = vote_signing_bytes(kind, network, height, round_, value_id)
    chain = network.chain_id
    v = Vote(kind, chain, height, round_, value_id, key.public_key, key.sign(message))
    assert decode_message(v.encode()) == v
    # On the wire: the signed fields without the genesis hash, then signer and signature.
    cid = chain.encode()
    signed = v.signing_bytes(network)
    assert signed == bytes((kind, len(cid))) + cid + network.genesis_hash + signed[34 + len(cid) :]
    assert v.encode() == signed[: 2 + len(cid)] + signed[34 + len(cid) :] + key.public_key + (
        v.signature
    )
    assert crypto.verify(key.public_key, v.signature, signed)


@FAST
@given(
    chains,
    u64,
    st.integers(min_value=1, max_value=2**31 - 1),
    st.binary(max_size=300),
    keys,
    st.data(),
)
def test_proposals_round_trip(chain, height, round_, value, key, data):
    valid_round = data.draw(st.integers(min_value=-1, max_value=round_ - 1))
    network = crypto.Network(chain, GENESIS_HASH)
    signed = proposal_signing_bytes(network, height, round_, valid_round, vid(value))
    p = Proposal(chain, height, round_, valid_round, value, key.public_key, key.sign(signed))
    assert decode_message(p.encode()) == p
    assert p.signing_bytes(network, vid(value)) == signed and signed[0] == TAG_PROPOSAL


def test_a_precommit_signs_exactly_the_block_precommit_message():
    assert vote_signing_bytes(PRECOMMIT, NETWORK, 3, 1, vid(A)) == precommit_message(
        NETWORK, 3, 1, vid(A)
    )
    assert len({TAG_PREVOTE, TAG_PRECOMMIT, TAG_PROPOSAL}) == 3
    nil = vote(KEYS[0], PREVOTE, 0, None)
    assert nil.signing_bytes(NETWORK).endswith(NIL_ID)
    assert decode_message(nil.encode()).value_id is None


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x21",
        bytes([0x42, 1]) + b"x" + bytes(200),
        vote(KEYS[0], PREVOTE, 0, A).encode()[:-1],
        bytes([TAG_PROPOSAL, 1]) + b"x" + bytes(10),
        bytes([TAG_PREVOTE, 2]) + b"\xff\xfe" + bytes(140),
    ],
)
def test_malformed_messages_are_refused(data):
    with pytest.raises(MessageError):
        decode_message(data)


def test_fields_are_checked_when_a_message_is_made():
    with pytest.raises(MessageError, match="valid round"):
        Proposal(CHAIN, H, 2, 2, A, KEYS[0].public_key, bytes(64))
    with pytest.raises(MessageError, match="value id"):
        Vote(PREVOTE, CHAIN, H, 0, NIL_ID, KEYS[0].public_key, bytes(64))
