"""Cloning a GRPO run (issue 12, item 1): the clone's plan counts the experiment's prompts.

For GRPO a run's ``plan.num_examples`` counts TRL's sampler samples (each prompt
``num_generations`` times, ...), not dataset rows. The clone was sized from it, so a warm clone
was refused ("plan mismatch") and a cold one ran past TRL's dataloader. Sized from the store's
``train_rows`` instead, both clones are accepted, train to the end, and the experiment ends.
"""

from __future__ import annotations

from rf_ray import Experiment, NoPruning, RFGridSearch, RFGRPOConfig, RFModelConfig
from rf_ray.toy import TOY_MODEL_NAME, arithmetic_reward, format_reward, grpo_dataset

# 8 prompts, 2 per generation batch (4 generations, 4 per device batch x 2 steps per
# generation): 4 optimizer steps in 2 chunks of 2.
GRPO_ARGS = dict(
    per_device_train_batch_size=4, gradient_accumulation_steps=2, num_generations=4,
    max_completion_length=4, num_train_epochs=1, learning_rate=5e-3,
    lora_rank=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
)  # fmt: skip


def _wait_first_chunk(exp: Experiment, run_id: int, timeout: float = 300) -> None:
    """Until the run's first chunk is recorded (a warm start needs its checkpoint)."""
    row = exp.wait_for_progress(run_id, chunks=1, timeout=timeout)
    assert row["chunks_done"] >= 1, row


def test_a_grpo_run_clones_warm_and_cold_and_all_train_to_the_end(ray_cluster, tmp_path):
    exp = Experiment("grpo-clone", experiment_path=tmp_path)
    config = RFModelConfig(
        model_name=TOY_MODEL_NAME,
        training_args=RFGRPOConfig(**GRPO_ARGS),
        reward_funcs=[arithmetic_reward, format_reward],
    )
    # The group holds the experiment open (the public hook Tune uses), so run 1 finishing its
    # last chunk before the clones arrive does not end the experiment under them.
    group = RFGridSearch(config)
    group.hold_token = "clones"
    try:
        exp.run_fit(
            group, train_dataset=grpo_dataset(8), num_chunks=2, seed=5, pruner=NoPruning(),
            live_view=False,
            blocking=False,
        )  # fmt: skip
        _wait_first_chunk(exp, 1)
        warm = exp.clone_modify(1, {"learning_rate": 1e-3}, warm_start=True)["run_id"]
        cold = exp.clone_modify(1, {"learning_rate": 1e-3})["run_id"]
        exp.unhold("clones")
        info = exp.wait().set_index("run_id")
    finally:
        exp.end()
    assert (warm, cold) == (2, 3)
    assert info.loc[1, "total_steps"] == 4
    assert info.loc[warm, "total_steps"] == info.loc[cold, "total_steps"] == 4
    assert dict(info["status"]) == {1: "completed", 2: "completed", 3: "completed"}
    assert dict(info["steps_done"]) == {1: 4, 2: 4, 3: 4}
    assert info.loc[warm, "parent_run_id"] == info.loc[cold, "parent_run_id"] == 1
