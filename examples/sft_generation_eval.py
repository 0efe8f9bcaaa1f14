"""Compare LoRA SFT configs on what they generate, not only on eval loss.

Four configs (2 learning rates x 2 LoRA ranks) train on the embedded tiny Llama's toy tasks
(copy, reverse, sort, add). At every chunk end each run completes 16 held-out prompts with its
own adapter (all runs of a fused group in one batched ``generate``) and is scored with ROUGE-L
and exact match against the reference answers; successive halving prunes on ROUGE-L. The
leaderboard ranks on ROUGE-L and shows each run's eval loss beside it, and says whether the two
rankings disagree. Run it with

    python examples/sft_generation_eval.py

(a few minutes on a laptop CPU; offline). Then ``rf-ray samples <experiment> <run>`` prints a
run's last prompts, references and generations side by side, and ``rf-ray status <experiment>``
shows the generation metrics beside the pruner's.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rf_ray import Experiment, List, RFModelConfig, RFSFTConfig, SuccessiveHalving
from rf_ray.toy import TOY_MODEL_NAME, sft_dataset, sft_eval_dataset


def make_config(eval_generations: int = 16) -> RFModelConfig:
    """The 4 configs, scored on their greedy generations."""
    return RFModelConfig(
        model_name=TOY_MODEL_NAME,
        training_args=RFSFTConfig(
            learning_rate=List([3e-3, 3e-4]),
            lora_rank=List([4, 16]),
            lora_alpha=16,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
            per_device_train_batch_size=8,
            num_train_epochs=1,
            lr_scheduler_type="cosine",
            warmup_steps=2,
            max_length=64,
        ),
        generation_config={"max_new_tokens": 16, "do_sample": False},
        eval_metrics_fn=["rougeL", "exact_match"],
        eval_generations=eval_generations,
    )


def leaderboard(exp: Experiment) -> tuple[object, int, bool]:
    """Per run: its config, last ROUGE-L, exact match and eval loss, ranked on ROUGE-L; and
    whether ranking on eval loss would order the runs differently."""
    info = exp.get_runs_info().set_index("run_id")
    chunks = exp.get_chunk_results()
    last = chunks.sort_values("chunk").groupby("run_id").last()
    board = last[["chunk", "rougeL", "exact_match", "eval_loss"]].copy()
    board.insert(0, "lora.r", [info.loc[r, "config"]["lora.r"] for r in board.index])
    board.insert(0, "learning_rate", [info.loc[r, "config"]["learning_rate"] for r in board.index])
    board["status"] = info.loc[board.index, "status"]
    # Runs compared at the same rung only: the deepest chunk every run reached.
    rung = int(chunks.groupby("run_id")["chunk"].max().min())
    at_rung = chunks[chunks["chunk"] == rung].set_index("run_id")
    by_rouge = list(at_rung.sort_values("rougeL", ascending=False, kind="stable").index)
    by_loss = list(at_rung.sort_values("eval_loss", kind="stable").index)
    return board.sort_values(["chunk", "rougeL"], ascending=False), rung, by_rouge != by_loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="sft-gen-eval", help="experiment name")
    parser.add_argument("--path", default=None, help="experiments root (default ./rf_experiments)")
    parser.add_argument("--train-size", type=int, default=384)
    parser.add_argument("--num-chunks", type=int, default=3)
    parser.add_argument("--eval-generations", type=int, default=16)
    parser.add_argument("--no-live", action="store_true", help="no live terminal view")
    args = parser.parse_args()

    start = time.perf_counter()
    exp = Experiment(args.name + time.strftime("-%Y%m%d-%H%M%S"), experiment_path=args.path)
    try:
        exp.run_fit(
            make_config(args.eval_generations),
            train_dataset=sft_dataset(args.train_size, seed=0),
            eval_dataset=sft_eval_dataset(64, seed=1),
            num_chunks=args.num_chunks,
            seed=42,
            pruner=SuccessiveHalving(metric="rougeL", mode="max", eta=2, min_chunks=1),
            live_view=not args.no_live,
        )
        board, rung, disagree = leaderboard(exp)
        print("\nLeaderboard (ROUGE-L of greedy generations, last chunk of each run):")
        print(board.to_string())
        verdict = "DISAGREE" if disagree else "agree"
        print(f"\nRanked at chunk {rung} on eval loss and on ROUGE-L, the two orders {verdict}.")
        best = exp.get_best_run()
        print(f"Best run on ROUGE-L: {best}")
        print(f"Read its generations: rf-ray samples {exp.name} {best} --path {exp.dir.parent}")
    finally:
        exp.end()
    print(f"Done in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
