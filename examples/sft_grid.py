"""rf-ray's main job: 8 LoRA SFT configs (learning rate x LoRA rank) on one resident base model,
interleaved chunk by chunk and pruned with successive halving.

It runs offline on the embedded tiny Llama and its synthetic instruction data, on a laptop CPU
or a GPU, in a few minutes. Run it with

    python examples/sft_grid.py

or as a Ray Job: ``ray job submit --working-dir . -- python examples/sft_grid.py``.
It prints the leaderboard, the best run, where its adapter was exported and where the MLflow runs
are (``rf-ray dashboard`` shows them).

It needs no extra: ``pip install rf-ray`` brings everything it imports.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rf_ray import Experiment, List, RFGridSearch, RFModelConfig, RFSFTConfig, SuccessiveHalving
from rf_ray.toy import TOY_MODEL_NAME, sft_dataset, sft_eval_dataset


def make_config_group(num_train_epochs: float = 1.0) -> RFGridSearch:
    """The 8 configs: 4 learning rates x 2 LoRA ranks (the bench reuses this)."""
    return RFGridSearch(
        RFModelConfig(
            model_name=TOY_MODEL_NAME,
            training_args=RFSFTConfig(
                learning_rate=List([3e-3, 1e-3, 3e-4, 1e-4]),
                lora_rank=List([4, 16]),
                lora_alpha=16,
                target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                per_device_train_batch_size=8,
                num_train_epochs=num_train_epochs,
                lr_scheduler_type="cosine",
                warmup_steps=2,
                max_length=64,
            ),
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="sft-grid", help="experiment name")
    parser.add_argument("--path", default=None, help="experiments root (default ./rf_experiments)")
    parser.add_argument("--train-size", type=int, default=512)
    parser.add_argument("--num-chunks", type=int, default=4)
    parser.add_argument("--no-live", action="store_true", help="no live terminal view")
    args = parser.parse_args()

    start = time.perf_counter()
    exp = Experiment(args.name + time.strftime("-%Y%m%d-%H%M%S"), experiment_path=args.path)
    try:
        exp.run_fit(
            make_config_group(),
            train_dataset=sft_dataset(args.train_size, seed=0),
            eval_dataset=sft_eval_dataset(64, seed=1),
            num_chunks=args.num_chunks,
            seed=42,
            pruner=SuccessiveHalving(eta=2, min_chunks=1),
            live_view=not args.no_live,
        )
        info = exp.get_runs_info()
        board = info[["run_id", "status", "chunks_done", "best_metric", "pruned_at"]].copy()
        board.insert(1, "learning_rate", [c["learning_rate"] for c in info["config"]])
        board.insert(2, "lora.r", [c["lora.r"] for c in info["config"]])
        print("\nLeaderboard (best eval_loss per run):")
        print(board.sort_values("best_metric").to_string(index=False))
        best = exp.get_best_run()
        adapter = exp.export(best, exp.dir / "best-adapter")
        stats = exp.stats()
        print(f"\nBest run: {best}; adapter exported to {adapter}")
        print(
            f"Base-model loads: {stats['base_loads']}, executor busy {stats['busy_fraction']:.0%}"
        )
        print(f"MLflow runs: {exp.tracking_uri}")
        print(f"  see them with: rf-ray dashboard --path {exp.dir}")
        print(f"  run table:     rf-ray status {exp.name} --path {exp.dir.parent}")
        print(f"Experiment directory: {exp.dir}; finished in {time.perf_counter() - start:.0f} s")
    finally:
        exp.end()


if __name__ == "__main__":
    main()
