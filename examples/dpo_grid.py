"""DPO on the shared base model: 6 LoRA configs (beta x learning rate) trained as adapters on one
resident copy of the tiny Llama, interleaved chunk by chunk and pruned with successive halving
on TRL's ``rewards/accuracies`` (the share of pairs whose chosen answer out-scores the rejected).

The reference policy of every run is the same base with its adapter disabled, so no second copy
of the weights exists. It runs offline on the embedded toy model and its synthetic preference
pairs (right answer vs a near-miss), in a few minutes on 2 CPU cores:

    python examples/dpo_grid.py

It prints the leaderboard with each run's last-chunk DPO metrics (accuracy, margin) and where
the MLflow runs are (``rf-ray dashboard`` shows them).

It needs no extra: ``pip install rf-ray`` brings everything it imports.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rf_ray import Experiment, List, RFDPOConfig, RFGridSearch, RFModelConfig, SuccessiveHalving
from rf_ray.toy import TOY_MODEL_NAME, dpo_dataset

METRIC = "rewards/accuracies"


def make_config_group() -> RFGridSearch:
    """6 configs: 3 DPO betas x 2 learning rates."""
    return RFGridSearch(
        RFModelConfig(
            model_name=TOY_MODEL_NAME,
            training_args=RFDPOConfig(
                beta=List([0.05, 0.1, 0.5]),
                learning_rate=List([5e-3, 5e-4]),
                lora_rank=8,
                lora_alpha=16,
                target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                per_device_train_batch_size=8,
                num_train_epochs=1,
                max_length=48,
            ),
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="dpo-grid", help="experiment name")
    parser.add_argument("--path", default=None, help="experiments root (default ./rf_experiments)")
    parser.add_argument("--train-size", type=int, default=256)
    parser.add_argument("--num-chunks", type=int, default=4)
    parser.add_argument("--no-live", action="store_true", help="no live terminal view")
    args = parser.parse_args()

    start = time.perf_counter()
    exp = Experiment(args.name + time.strftime("-%Y%m%d-%H%M%S"), experiment_path=args.path)
    try:
        exp.run_fit(
            make_config_group(),
            train_dataset=dpo_dataset(args.train_size, seed=0),
            num_chunks=args.num_chunks,
            seed=42,
            pruner=SuccessiveHalving(metric=METRIC, mode="max", eta=2, min_chunks=1),
            live_view=not args.no_live,
        )
        info = exp.get_runs_info()
        chunks = exp.get_chunk_results()
        last = chunks.sort_values("chunk").groupby("run_id").last()
        board = info[["run_id", "status", "chunks_done", "pruned_at"]].copy()
        board.insert(1, "beta", [c["beta"] for c in info["config"]])
        board.insert(2, "learning_rate", [c["learning_rate"] for c in info["config"]])
        for key in ("rewards/accuracies", "rewards/margins", "train_loss"):
            board[f"last {key}"] = board["run_id"].map(last[key]).round(3)
        board["best accuracy"] = info["best_metric"].round(3)
        print(f"\nLeaderboard (pruned on the chunk mean of {METRIC}, higher is better):")
        print(board.sort_values("best accuracy", ascending=False).to_string(index=False))
        best = exp.get_best_run()
        print(f"\nBest run: {best}; its adapter: {exp.dir / 'runs' / str(best) / 'adapter'}")
        print(f"MLflow runs: {exp.tracking_uri}")
        print(f"  see them with: rf-ray dashboard --path {exp.dir}")
        print(f"Experiment directory: {exp.dir}; finished in {time.perf_counter() - start:.0f} s")
    finally:
        exp.end()


if __name__ == "__main__":
    main()
