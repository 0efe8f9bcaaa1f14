"""The run state machine: allowed moves pass, every other move raises with a useful message."""

from __future__ import annotations

import itertools

import pytest

from policies import ALLOWED_TRANSITIONS, RunStatus, is_live, is_terminal, transition
from policies.errors import IllegalTransitionError

S = RunStatus
ALL_PAIRS = list(itertools.product(RunStatus, RunStatus))


@pytest.mark.parametrize(
    ("current", "new"),
    [
        (S.PENDING, S.RUNNING),
        (S.PENDING, S.COMPLETED),
        (S.RUNNING, S.PRUNED),
        (S.RUNNING, S.STOPPED),
        (S.RUNNING, S.FAILED),
        (S.PRUNED, S.RUNNING),
        (S.STOPPED, S.RUNNING),
        (S.COMPLETED, S.DELETED),
        (S.FAILED, S.DELETED),
    ],
)
def test_allowed_moves_return_the_new_status(current: RunStatus, new: RunStatus) -> None:
    assert transition(current, new, run_id=7) is new


@pytest.mark.parametrize(
    ("current", "new"),
    [
        (S.COMPLETED, S.RUNNING),
        (S.FAILED, S.RUNNING),
        (S.DELETED, S.RUNNING),
        (S.PRUNED, S.COMPLETED),
        (S.STOPPED, S.PRUNED),
        (S.RUNNING, S.PENDING),
        (S.RUNNING, S.RUNNING),
    ],
)
def test_forbidden_moves_raise(current: RunStatus, new: RunStatus) -> None:
    with pytest.raises(IllegalTransitionError):
        transition(current, new, run_id=3)


def test_every_pair_agrees_with_the_table() -> None:
    for current, new in ALL_PAIRS:
        if new in ALLOWED_TRANSITIONS[current]:
            assert transition(current, new) is new
        else:
            with pytest.raises(IllegalTransitionError):
                transition(current, new)


def test_message_names_run_statuses_and_options() -> None:
    with pytest.raises(IllegalTransitionError) as info:
        transition(S.PRUNED, S.COMPLETED, run_id=42)
    message = str(info.value)
    assert "run 42" in message
    assert "'pruned'" in message
    assert "'completed'" in message
    assert "deleted" in message
    assert "running" in message


def test_message_for_final_status_says_nothing_is_allowed() -> None:
    with pytest.raises(IllegalTransitionError, match="final"):
        transition(S.DELETED, S.RUNNING)


def test_illegal_transition_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="cannot go"):
        transition(S.COMPLETED, S.RUNNING)


def test_accepts_string_values() -> None:
    assert transition("pending", "running") is S.RUNNING  # type: ignore[arg-type]


def test_pruned_and_stopped_runs_can_resume_but_terminal_ones_cannot() -> None:
    resumable = {s for s in RunStatus if S.RUNNING in ALLOWED_TRANSITIONS[s]}
    assert resumable == {S.PENDING, S.STOPPED, S.PRUNED}
    assert not resumable & {s for s in RunStatus if is_terminal(s)}


@pytest.mark.parametrize("status", list(RunStatus))
def test_live_and_terminal(status: RunStatus) -> None:
    assert is_live(status) == (status in {S.PENDING, S.RUNNING})
    assert is_terminal(status) == (status in {S.COMPLETED, S.FAILED, S.DELETED})
    assert not (is_live(status) and is_terminal(status))


def test_terminal_statuses_lead_only_to_deleted() -> None:
    for status in RunStatus:
        if is_terminal(status):
            assert ALLOWED_TRANSITIONS[status] <= {S.DELETED}
