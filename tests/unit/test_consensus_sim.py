"""Tendermint among four validators in the deterministic simulation (tests/consensus_sim.py):
safety on every commit and liveness once the faults stop, over many seeds; then proof that
the checks can fail.

QNET_SIM_SEEDS=N runs N seeds (a soak run); QNET_SIM_SEED=S replays seed S alone.
"""

import os

import pytest

from consensus_sim import (
    NEW_HEIGHTS,
    REPLAY,
    LivenessViolation,
    LockIgnoringCore,
    SafetyViolation,
    SimConfig,
    SimulationFailure,
    run,
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
