"""Fusion groups: who shares a pass with whom, within the budget."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policies.errors import ConfigError
from policies.fusion import Candidate, FusionPolicy, form_group


def _c(run_id, key="toy|SFT", tokens=100, chunks=0, steps=0):
    return Candidate(run_id, key, tokens, chunks, steps)


def test_same_key_same_rung_join_least_progress_first():
    others = [_c(4, steps=2), _c(2, steps=1), _c(3, steps=1), _c(5, key="toy|DPO"), _c(6, chunks=1)]
    assert form_group(_c(1), others, FusionPolicy(max_runs=8)) == [1, 2, 3, 4]


def test_unfusable_leader_trains_alone():
    assert form_group(_c(1, key=None), [_c(2, key=None), _c(3)], FusionPolicy()) == [1]


def test_max_runs_caps_the_group():
    others = [_c(i) for i in range(2, 10)]
    assert form_group(_c(1), others, FusionPolicy(max_runs=3)) == [1, 2, 3]
    assert form_group(_c(1), others, FusionPolicy(max_runs=1)) == [1]


def test_token_budget_splits_a_group_but_smaller_runs_may_still_fit():
    others = [_c(2, tokens=300), _c(3, tokens=900), _c(4, tokens=200)]
    # 100 + 300 = 400; 900 would exceed 1000; 200 fits (600).
    assert form_group(_c(1), others, FusionPolicy(max_tokens=1000)) == [1, 2, 4]


def test_policy_rejects_bad_values_naming_the_field():
    with pytest.raises(ConfigError, match="max_runs"):
        FusionPolicy(max_runs=0)
    with pytest.raises(ConfigError, match="max_tokens"):
        FusionPolicy(max_tokens=True)
    assert FusionPolicy.from_dict(FusionPolicy(3, 999).to_dict()) == FusionPolicy(3, 999)


@given(
    st.lists(
        st.tuples(st.sampled_from(["a", "b", None]), st.integers(1, 500), st.integers(0, 2)),
        max_size=12,
    ),
    st.integers(1, 6),
    st.integers(1, 2000),
)
def test_groups_always_respect_key_rung_and_budget(rows, max_runs, max_tokens):
    leader = _c(0, key="a", tokens=1)
    others = [_c(i + 1, key=k, tokens=t, chunks=c) for i, (k, t, c) in enumerate(rows)]
    group = form_group(leader, others, FusionPolicy(max_runs, max_tokens))
    by_id = {c.run_id: c for c in [leader, *others]}
    assert group[0] == 0
    assert len(group) == len(set(group)) <= max_runs
    members = [by_id[r] for r in group]
    assert all(m.key == "a" and m.chunks_done == 0 for m in members)
    assert len(group) == 1 or sum(m.tokens for m in members) <= max_tokens
