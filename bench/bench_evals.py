"""Benchmark: K evals pipelines on one generator, batched against one after another.

K pipelines share the shipped fact corpus's BM25 index and the tiny reader (``TINY_READER``:
a 0.1 M-parameter Llama); they differ in
``k`` (1..K retrieved documents), so each builds its own prompts. ``run_evals`` runs them over
the same shards two ways:

1. **batched** (``batched=True``, the default): the scheduler grants every pipeline's shard
   together and the executor generates each batch of all K pipelines in one batched
   ``generate`` (``actors/engine/evals/generate.py`` over ``generate_multi``);
2. **one after another** (``batched=False``): each pipeline's shard is its own slice and its own
   ``generate`` calls.

It reports generated tokens per second (new tokens up to each row's end of sequence, over the span
from the first shard's start to the last shard's end, from the store's slice times) and the
time to all decided (that span: every pipeline scored on every shard), and checks that both
ways produced identical answers (greedy decoding). Actor start-up is left out of both figures.

Run it with ``python bench/bench_evals.py`` (a few minutes on 2 CPU cores) or ``--quick`` (the
test suite's run: K=2, 8 queries, 2 shards, 2 new tokens: one run_evals per way on one Ray
cluster, well under a minute on a quiet 2-core machine). Timings on a loaded machine are not
publishable: the JSON records the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("RF_RAY_LIVE", "0")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import ray  # noqa: E402
from langchain_community.document_loaders import JSONLoader  # noqa: E402

from rf_ray import Experiment  # noqa: E402
from rf_ray.automl import List, RFGridSearch, RFLangChainRagSpec, RFvLLMModelConfig  # noqa: E402
from rf_ray.cluster import ensure_ray  # noqa: E402
from rf_ray.evals.toy import TINY_READER  # noqa: E402

DATA = REPO / "examples" / "data" / "facts"


def doc_id(record: dict, metadata: dict) -> dict:
    return {"doc_id": record["_id"]}


def preprocess(batch, rag, prompt_manager):
    context = rag.get_context(batch["query"])
    return {**batch, "prompts": [[{"role": "user", "content": f"{c} {q}"}]
                                 for c, q in zip(context, batch["query"])]}  # fmt: skip


def config_group(k: int, new_tokens: int) -> RFGridSearch:
    rag = RFLangChainRagSpec(
        document_loader=JSONLoader(
            str(DATA / "corpus.jsonl"),
            jq_schema=".",
            content_key="text",
            json_lines=True,
            metadata_func=doc_id,
        ),
        vector_store_cfg={"type": "bm25"},
        search_cfg={"type": "similarity", "k": List(list(range(1, k + 1)))},
    )
    generator = RFvLLMModelConfig(
        model_config={"model": TINY_READER},
        sampling_params={"temperature": 0.0, "max_tokens": new_tokens}, rag=rag,
    )  # fmt: skip
    return RFGridSearch({"vllm_config": generator, "batch_size": 8, "preprocess_fn": preprocess})


def measure(root: Path, name: str, args: argparse.Namespace, queries: list, batched: bool) -> dict:
    exp = Experiment(name, mode="evals", experiment_path=root)
    try:
        results = exp.run_evals(
            config_group(args.k, args.new_tokens), queries, num_shards=args.shards, seed=0,
            live_view=False, batched=batched,
        )  # fmt: skip
        chunks = exp.get_chunk_results()
        info = exp.get_runs_info()
    finally:
        exp.end()
    span = float(chunks["slice_ended_at"].max() - chunks["slice_started_at"].min())
    # Each shard's generated tokens (end-of-sequence included): its tokens/s x its seconds.
    tokens = round(float((chunks["tokens_per_second"] * chunks["slice_seconds"]).sum()))
    answers = {rid: list(zip(rows["query_id"], rows["generated_text"]))
               for rid, (rows, _) in results.items()}  # fmt: skip
    return {
        "seconds_to_all_decided": span,
        "tokens": tokens,
        "tokens_per_second": tokens / span if span else 0.0,
        "completed": int((info["status"] == "completed").sum()),
        "fused_with": sorted(set(chunks["fused_with"].astype(int))),
        "answers": answers,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=8, help="pipelines")
    parser.add_argument("--queries", type=int, default=48)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "evals.json"))
    args = parser.parse_args()
    if args.quick:
        args.k, args.queries, args.shards, args.new_tokens = 2, 8, 2, 2
    lines = (DATA / "queries.jsonl").read_text().splitlines()[: args.queries]
    queries = [json.loads(line) for line in lines]
    root = Path(tempfile.mkdtemp(prefix="bench-evals-"))
    cell: dict[str, Any] = {"k": args.k, "queries": len(queries), "shards": args.shards,
                            "new_tokens": args.new_tokens}  # fmt: skip
    # One Ray cluster for both ways: an Experiment that started Ray stops it when it ends, so
    # the second way would start it again (about as long as the quick run's work).
    ensure_ray()
    try:
        for label, batched in (("batched", True), ("one after another", False)):
            cell[label] = measure(root, label.replace(" ", "-"), args, queries, batched)
    finally:
        ray.shutdown()
    answers = [cell[label].pop("answers") for label in ("batched", "one after another")]
    cell["identical_answers"] = answers[0] == answers[1]
    slow, fast = cell["one after another"], cell["batched"]
    cell["speedup_tokens_per_second"] = fast["tokens_per_second"] / max(
        slow["tokens_per_second"], 1e-9
    )
    report = {"cells": [cell], "load_average": os.getloadavg(), "cpus": os.cpu_count(),
              "date": time.strftime("%Y-%m-%d")}  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    for label in ("batched", "one after another"):
        c = cell[label]
        print(f"{label:>18}: {c['tokens_per_second']:.1f} tokens/s, all decided in "
              f"{c['seconds_to_all_decided']:.1f} s ({c['completed']} completed)")  # fmt: skip
    print(f"identical answers: {cell['identical_answers']}; speed-up "
          f"{cell['speedup_tokens_per_second']:.2f}x; written to {args.out}")  # fmt: skip


if __name__ == "__main__":
    main()
