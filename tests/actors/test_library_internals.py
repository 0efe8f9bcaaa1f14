"""Every library private rf-ray uses is still there, with the parameters rf-ray passes.

rf-ray drives TRL's trainers step by step and needs a few private members of transformers, TRL,
accelerate and torch, and evals mode two of LangChain's text splitter
(``actors/engine/algorithms/*_internals.py``). An upgrade that removes or reshapes one fails
here, naming the member and the version it was written against, instead of deep inside a slice.
Members set per object are checked on real trainers built on the toy model (and a splitter).
"""

from __future__ import annotations

import pytest

from actors.engine.algorithms import (
    accelerate_internals,
    langchain_internals,
    torch_internals,
    transformers_internals,
    trl_internals,
)
from actors.engine.algorithms.internals import Private, problems
from actors.engine.executor import Executor
from rf_ray.toy import dpo_dataset, grpo_dataset, load_toy_model, sft_dataset
from tests.actors.test_fused import _dpo, _sft
from tests.actors.test_fused_grpo import RUNS
from tests.actors.test_fused_grpo import _specs as grpo_specs

MODULES = (
    transformers_internals, accelerate_internals, trl_internals, torch_internals,
    langchain_internals,
)  # fmt: skip
ALL = [p for module in MODULES for p in module.PRIVATES]


@pytest.mark.parametrize("private", [p for p in ALL if not p.instance_only], ids=str)
def test_class_members_are_there(private):
    assert problems(private) == []


@pytest.fixture(scope="module")
def trainers(tmp_path_factory):
    """One real trainer per algorithm, built by the executor as a run's trainer is (and a text
    splitter, for LangChain's members)."""
    tmp = tmp_path_factory.mktemp("internals")
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    built: list = [RecursiveCharacterTextSplitter(chunk_size=64, chunk_overlap=8)]
    for spec, data in (
        (_sft(tmp, 1, 1e-2), sft_dataset(44)),
        (_dpo(tmp, 2, 1e-2), dpo_dataset(40)),
        (grpo_specs(tmp, RUNS[:1])[0], grpo_dataset(8)),
    ):
        executor = Executor(lambda _: load_toy_model(), data, device="cpu")
        executor.add_run(spec)
        built.append(executor.registry[spec.run_id].trainer)
    return built


@pytest.mark.parametrize("private", [p for p in ALL if p.instance_only], ids=str)
def test_object_members_are_there(private, trainers):
    owner = private.owner_class()
    holders = [t for t in trainers if isinstance(t, owner)]
    schedulers = [getattr(t, "lr_scheduler", None) for t in trainers]
    holders += [s for s in schedulers if isinstance(s, owner)]
    assert holders, f"no built object is a {owner.__qualname__}"
    for holder in holders:
        assert problems(private, holder) == []


def test_a_removed_or_reshaped_member_is_named_with_its_version():
    gone = Private("transformers.trainer:Trainer", "_no_such_member", (), "transformers 5.25.0")
    (message,) = problems(gone)
    assert "transformers.trainer.Trainer._no_such_member" in message
    assert "written against transformers 5.25.0" in message
    reshaped = Private(
        "transformers.trainer:Trainer", "_get_num_items_in_batch", ("batches",), "transformers 5"
    )
    (message,) = problems(reshaped)
    assert "['batch_samples', 'device']" in message
    assert "['batches']" in message
    (message,) = problems(Private("accelerate.state:NoSuchState", "_x", None, "accelerate 1"))
    assert "its class is gone" in message
