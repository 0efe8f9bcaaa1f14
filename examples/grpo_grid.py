"""GRPO on the shared base model: 3 learning rates trained as LoRA adapters on one resident tiny
Llama. TRL's GRPOTrainer generates 8 completions per prompt with each run's own adapter active,
for a small task (reverse three letters), scored by ``rf_ray.toy.order_reward`` (the fraction of
letters in the right place).

Runs are compared after every chunk on their mean reward (GRPO's default metric, higher is
better) and pruned with successive halving. It runs offline on the embedded toy model in a few
minutes on 2 CPU cores:

    python examples/grpo_grid.py

It prints the leaderboard and every run's mean reward per chunk. The toy base model answers with
the right letters in scrambled order, so GRPO has a dense signal: at a good learning rate
(3e-3) the mean reward climbs from about 0.3 to about 0.8 in one epoch, while 3e-2 collapses and
3e-4 barely moves. The arithmetic task (``grpo_dataset`` + ``arithmetic_reward``) is also
shipped; it is much harder for this toy.

It needs no extra: ``pip install rf-ray`` brings everything it imports.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rf_ray import Experiment, List, RFGridSearch, RFGRPOConfig, RFModelConfig, SuccessiveHalving
from rf_ray.toy import TOY_MODEL_NAME, grpo_reverse_dataset, order_reward


def make_config_group(num_train_epochs: float) -> RFGridSearch:
    """3 configs: learning rates around the useful range for this toy."""
    return RFGridSearch(
        RFModelConfig(
            model_name=TOY_MODEL_NAME,
            reward_funcs=[order_reward],
            training_args=RFGRPOConfig(
                learning_rate=List([3e-2, 3e-3, 3e-4]),
                lora_rank=8,
                lora_alpha=16,
                target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                # 8 completions per prompt, 4 prompts per optimizer step; max_completion_length
                # covers three letters and the end token.
                num_generations=8,
                per_device_train_batch_size=32,
                max_completion_length=4,
                lr_scheduler_type="constant",
                num_train_epochs=num_train_epochs,
            ),
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="grpo-grid", help="experiment name")
    parser.add_argument("--path", default=None, help="experiments root (default ./rf_experiments)")
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--epochs", type=float, default=1)
    parser.add_argument("--num-chunks", type=int, default=4, help="chunks per epoch")
    parser.add_argument("--no-live", action="store_true", help="no live terminal view")
    args = parser.parse_args()

    start = time.perf_counter()
    exp = Experiment(args.name + time.strftime("-%Y%m%d-%H%M%S"), experiment_path=args.path)
    try:
        exp.run_fit(
            make_config_group(args.epochs),
            train_dataset=grpo_reverse_dataset(args.prompts, seed=0),
            num_chunks=args.num_chunks,
            seed=42,
            pruner=SuccessiveHalving(eta=2, min_chunks=2),  # metric: mean reward, mode max
            live_view=not args.no_live,
        )
        info = exp.get_runs_info()
        chunks = exp.get_chunk_results().sort_values("chunk")
        by_run = chunks.groupby("run_id")["reward"]
        board = info[["run_id", "status", "chunks_done", "pruned_at"]].copy()
        board.insert(1, "learning_rate", [c["learning_rate"] for c in info["config"]])
        board["first chunk reward"] = board["run_id"].map(by_run.first()).round(3)
        board["last chunk reward"] = board["run_id"].map(by_run.last()).round(3)
        board["best chunk reward"] = info["best_metric"].round(3)
        print("\nLeaderboard (chunk mean reward, higher is better):")
        print(board.sort_values("best chunk reward", ascending=False).to_string(index=False))
        print("\nMean reward per chunk:")
        for run_id, rewards in by_run:
            print(f"  run {run_id}: " + " ".join(f"{r:.3f}" for r in rewards))
        print(f"\nMLflow runs: {exp.tracking_uri}")
        print(f"  see them with: rf-ray dashboard --path {exp.dir}")
        print(f"Experiment directory: {exp.dir}; finished in {time.perf_counter() - start:.0f} s")
    finally:
        exp.end()


if __name__ == "__main__":
    main()
