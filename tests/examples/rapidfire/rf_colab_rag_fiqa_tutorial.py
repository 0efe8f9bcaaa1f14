"""RapidFire AI's ``tutorial_notebooks/rag-contexteng/rf-colab-rag-fiqa-tutorial.ipynb``, ported.

The notebook's code cells in order, with only imports, models, data and sizes changed; each
changed line says so in a comment ("# rf-ray:"). The Colab-only cells (pip install, the Ray
dashboard iframe, the "click to end" button) are left out. Run by
``tests/examples/rapidfire/test_rf_colab_rag_fiqa_tutorial.py`` on a small corpus it builds, from
a directory holding ``datasets/fiqa/`` (the experiment goes to ``rf_experiments/`` there):

    cd DIR && python .../tests/examples/rapidfire/rf_colab_rag_fiqa_tutorial.py

The models are rf-ray's offline toys (a tiny Llama, a tiny embedding model and cross-encoder),
so the metrics it prints say nothing about retrieval quality; the flow is the tutorial's.
"""

# --- cell: Import RapidFire Components
import os
os.environ['PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION'] = 'python'
os.environ['RF_MLFLOW_ENABLED'] = 'false'

from rf_ray import Experiment  # rf-ray: was `from rapidfireai import Experiment`
from rf_ray.automl import List, RFLangChainRagSpec, RFvLLMModelConfig, RFPromptManager, RFGridSearch  # rf-ray: was `from rapidfireai.automl import ...`  # noqa: E501
import re, json
from typing import List as listtype, Dict, Any

# --- cell: Loading the Data
from datasets import load_dataset
import pandas as pd
import json, random
from pathlib import Path

# Dataset directory
dataset_dir = Path("datasets")  # rf-ray: data the test builds (was /content/tutorial_notebooks/rag-contexteng/datasets)

# Load full dataset
fiqa_dataset = load_dataset("json", data_files=str(dataset_dir / "fiqa" / "queries.jsonl"), split="train")
fiqa_dataset = fiqa_dataset.rename_columns({"text": "query", "_id": "query_id"})
qrels = pd.read_csv(str(dataset_dir / "fiqa" / "qrels.tsv"), sep="\t")
qrels = qrels.rename(
    columns={"query-id": "query_id", "corpus-id": "corpus_id", "score": "relevance"}
)

# Downsample queries and corpus JOINTLY
sample_fraction = 1.0  # rf-ray: size (was 0.01 of FiQA's 6,648 queries; the test's corpus is small)
rseed = 1
random.seed(rseed)

# Step 1: Sample queries
sample_size = int(len(fiqa_dataset) * sample_fraction)
fiqa_dataset = fiqa_dataset.shuffle(seed=rseed).select(range(sample_size))

# Convert query_ids to integers for matching
query_ids = set([int(qid) for qid in fiqa_dataset["query_id"]])

# Step 2: Get all corpus docs relevant to sampled queries
qrels_filtered = qrels[qrels["query_id"].isin(query_ids)]
relevant_corpus_ids = set(qrels_filtered["corpus_id"].tolist())

print(f"Using {len(fiqa_dataset)} queries")
print(f"Found {len(relevant_corpus_ids)} relevant documents for these queries")

# Step 3: Load corpus and filter to relevant docs
input_file = dataset_dir / "fiqa" / "corpus.jsonl"
output_file = dataset_dir / "fiqa" / "corpus_sampled.jsonl"

with open(input_file, 'r') as f:
    all_corpus = [json.loads(line) for line in f]

# Keep only relevant documents (convert _id to int for matching)
sampled_corpus = [doc for doc in all_corpus if int(doc["_id"]) in relevant_corpus_ids]

# Write sampled corpus
with open(output_file, 'w') as f:
    for doc in sampled_corpus:
        f.write(json.dumps(doc) + '\n')

print(f"Sampled {len(sampled_corpus)} documents from {len(all_corpus)} total")
print(f"Saved to: {output_file}")
print(f"Filtered qrels to {len(qrels_filtered)} relevance judgments")

# Update qrels to match
qrels = qrels_filtered

# --- cell: Defining the RAG Search Space
from langchain_community.document_loaders import DirectoryLoader, JSONLoader
from langchain_text_splitters import RecursiveCharacterTextSplitter
from langchain_community.embeddings import HuggingFaceEmbeddings  # rf-ray: was langchain_huggingface (it pins huggingface_hub<2); the same class
from langchain_classic.retrievers.document_compressors import CrossEncoderReranker
from langchain_community.cross_encoders import HuggingFaceCrossEncoder
from transformers import AutoTokenizer  # rf-ray: a local tokenizer for the splitters (tiktoken's gpt2 downloads its vocabulary)
from rf_ray.evals.toy import TINY_CROSS_ENCODER, TINY_EMBEDDER  # rf-ray: the offline toy models
splitter_tokenizer = AutoTokenizer.from_pretrained(TINY_EMBEDDER)  # rf-ray: models

# Per-Actor batch size for hardware efficiency
batch_size = 4  # rf-ray: size (was 8)

# 2 chunk sizes x 2 reranking top-n = 4 combinations in total
rag_gpu = RFLangChainRagSpec(
    document_loader=DirectoryLoader(
        path=str(dataset_dir / "fiqa"),
        glob="corpus_sampled.jsonl",
        loader_cls=JSONLoader,
        loader_kwargs={
            "jq_schema": ".",
            "content_key": "text",
            "metadata_func": lambda record, metadata: {
                "corpus_id": int(record.get("_id"))
            },  # store the document id
            "json_lines": True,
            "text_content": False,
        },
        sample_seed=42,
    ),
    # 2 chunking strategies with different chunk sizes
    text_splitter=List([
            RecursiveCharacterTextSplitter.from_huggingface_tokenizer(  # rf-ray: models (was from_tiktoken_encoder)
                splitter_tokenizer, chunk_size=16, chunk_overlap=4  # rf-ray: models, sizes (was encoding_name="gpt2", 256, 32)
            ),
            RecursiveCharacterTextSplitter.from_huggingface_tokenizer(  # rf-ray: models (was from_tiktoken_encoder)
                splitter_tokenizer, chunk_size=8, chunk_overlap=4  # rf-ray: models, sizes (was encoding_name="gpt2", 128, 32)
            ),
        ],
    ),
    embedding_cfg={
        "class": HuggingFaceEmbeddings,
        "model_name": TINY_EMBEDDER,  # rf-ray: models (was sentence-transformers/all-MiniLM-L6-v2)
        "model_kwargs": {"device": "cpu"},  # rf-ray: no GPU here (was cuda:0)
        "encode_kwargs": {"normalize_embeddings": True, "batch_size": batch_size},
    },
    # FAISS is an in-memory store and only works in create mode.
    vector_store_cfg={
        "type": "faiss",
        "batch_size": batch_size,
    }, # if not set, uses FAISS by default
    search_cfg={
        "type": "similarity",
        "k": 8
    },
    # 2 reranking strategies with different top-n values
    reranker_cfg={
        "class": CrossEncoderReranker,
        "model_name": TINY_CROSS_ENCODER,  # rf-ray: models (was cross-encoder/ms-marco-MiniLM-L6-v2)
        "model_kwargs": {"device": "cpu"},  # rf-ray: no GPU here (was cuda:0)
        "top_n": List([2, 5]),
    },
    enable_gpu_search=True,
)

# --- cell: Define Data Processing and Postprocessing Functions
def sample_preprocess_fn(
    batch: Dict[str, listtype], rag: RFLangChainRagSpec, prompt_manager: RFPromptManager
) -> Dict[str, listtype]:
    """Function to prepare the final inputs given to the generator model"""

    INSTRUCTIONS = "Utilize your financial knowledge, give your answer or opinion to the input question or subject matter."

    # Perform batched retrieval over all queries; returns a list of lists of k documents per query
    all_context = rag.get_context(batch_queries=batch["query"], serialize=False)

    # Extract the retrieved document ids from the context
    retrieved_documents = [
        [doc.metadata["corpus_id"] for doc in docs] for docs in all_context
    ]

    # Serialize the retrieved documents into a single string per query using the default template
    serialized_context = rag.serialize_documents(all_context)
    batch["query_id"] = [int(query_id) for query_id in batch["query_id"]]

    # Each batch to contain conversational prompt, retrieved documents, and original 'query_id', 'query', 'metadata'
    return {
        "prompts": [
            [
                {"role": "system", "content": INSTRUCTIONS},
                {
                    "role": "user",
                    "content": f"Here is some relevant context:\n{context}. \nNow answer the following question using the context provided earlier:\n{question}",
                },
            ]
            for question, context in zip(batch["query"], serialized_context)
        ],
        "retrieved_documents": retrieved_documents,
        **batch,
    }


def sample_postprocess_fn(batch: Dict[str, listtype]) -> Dict[str, listtype]:
    """Function to postprocess outputs produced by generator model"""
    # Get ground truth documents for each query; can be done in preprocess_fn too but done here for clarity
    batch["ground_truth_documents"] = [
        qrels[qrels["query_id"] == query_id]["corpus_id"].tolist()
        for query_id in batch["query_id"]
    ]
    return batch

# --- cell: Define Custom Eval Metrics Functions
import math


def compute_ndcg_at_k(retrieved_docs: list, expected_docs: set, k=5):
    """Utility function to compute NDCG@k"""
    relevance = [1 if doc in expected_docs else 0 for doc in retrieved_docs[:k]]
    dcg = sum(rel / math.log2(i + 2) for i, rel in enumerate(relevance))

    # IDCG: perfect ranking limited by min(k, len(expected_docs))
    ideal_length = min(k, len(expected_docs))
    ideal_relevance = [1] * ideal_length + [0] * (k - ideal_length)
    idcg = sum(rel / math.log2(i + 2) for i, rel in enumerate(ideal_relevance))

    return dcg / idcg if idcg > 0 else 0.0


def compute_rr(retrieved_docs: list, expected_docs: set):
    """Utility function to compute Reciprocal Rank (RR) for a single query"""
    rr = 0
    for i, retrieved_doc in enumerate(retrieved_docs):
        if retrieved_doc in expected_docs:
            rr = 1 / (i + 1)
            break
    return rr


def sample_compute_metrics_fn(batch: Dict[str, listtype]) -> Dict[str, Dict[str, Any]]:
    """Function to compute all eval metrics based on retrievals and/or generations"""

    true_positives, precisions, recalls, f1_scores, ndcgs, rrs = 0, [], [], [], [], []
    total_queries = len(batch["query"])

    for pred, gt in zip(batch["retrieved_documents"], batch["ground_truth_documents"]):
        expected_set = set(gt)
        retrieved_set = set(pred)

        true_positives = len(expected_set.intersection(retrieved_set))
        precision = true_positives / len(retrieved_set) if len(retrieved_set) > 0 else 0
        recall = true_positives / len(expected_set) if len(expected_set) > 0 else 0
        f1 = (
            2 * precision * recall / (precision + recall)
            if (precision + recall) > 0
            else 0
        )

        precisions.append(precision)
        recalls.append(recall)
        f1_scores.append(f1)
        ndcgs.append(compute_ndcg_at_k(pred, expected_set, k=5))
        rrs.append(compute_rr(pred, expected_set))

    return {
        "Total": {"value": total_queries},
        "Precision": {"value": sum(precisions) / total_queries},
        "Recall": {"value": sum(recalls) / total_queries},
        "F1 Score": {"value": sum(f1_scores) / total_queries},
        "NDCG@5": {"value": sum(ndcgs) / total_queries},
        "MRR": {"value": sum(rrs) / total_queries},
    }


def sample_accumulate_metrics_fn(
    aggregated_metrics: Dict[str, listtype],
) -> Dict[str, Dict[str, Any]]:
    """Function to accumulate eval metrics across all batches"""

    num_queries_per_batch = [m["value"] for m in aggregated_metrics["Total"]]
    total_queries = sum(num_queries_per_batch)
    algebraic_metrics = ["Precision", "Recall", "F1 Score", "NDCG@5", "MRR"]

    return {
        "Total": {"value": total_queries},
        **{
            metric: {
                "value": sum(
                    m["value"] * queries
                    for m, queries in zip(
                        aggregated_metrics[metric], num_queries_per_batch
                    )
                )
                / total_queries,
                "is_algebraic": True,
                "value_range": (0, 1),
            }
            for metric in algebraic_metrics
        },
    }

# --- cell: Define Partial Multi-Config Knobs for vLLM Generator
from rf_ray.toy import TOY_MODEL_NAME  # rf-ray: the offline toy generator

vllm_config1 = RFvLLMModelConfig(
    model_config={
        "model": TOY_MODEL_NAME,  # rf-ray: models (was Qwen/Qwen2.5-0.5B-Instruct)
        "dtype": "half",
        "gpu_memory_utilization": 0.25,
        "tensor_parallel_size": 1,
        "distributed_executor_backend": "mp",
        "enable_chunked_prefill": False,
        "enable_prefix_caching": False,
        "max_model_len": 2048,
        "disable_log_stats": True,  # Disable vLLM progress logging
        "enforce_eager": True,
        "disable_custom_all_reduce": True,
    },
    sampling_params={
        "temperature": 0.8,
        "top_p": 0.95,
        "max_tokens": 8,  # rf-ray: size (was 128)
    },
    rag=rag_gpu,
    prompt_manager=None,
)

config_set = {
    "vllm_config": vllm_config1,  # Only 1 generator, but it represents 4 full configs
    "batch_size": batch_size,
    "preprocess_fn": sample_preprocess_fn,
    "postprocess_fn": sample_postprocess_fn,
    "compute_metrics_fn": sample_compute_metrics_fn,
    "accumulate_metrics_fn": sample_accumulate_metrics_fn,
    "online_strategy_kwargs": {
        "strategy_name": "normal",
        "confidence_level": 0.95,
        "use_fpc": True,
    },
}

# --- cell: Create Config Group
# Simple grid search across all config combinations: 4 total (2 chunkers × 2 rerankers)
config_group = RFGridSearch(config_set)

# --- cell: Create Experiment
experiment = Experiment(experiment_name="exp1-fiqa-rag-colab", mode="evals")

# --- cell: Run Multi-Config Evals
# Launch evals of all RAG configs in the config_group with swap granularity of 4 chunks
results = experiment.run_evals(
    config_group=config_group,
    dataset=fiqa_dataset,
    num_shards=4,
    seed=42,
)

# --- cell: View Results
# Convert results dict to DataFrame
results_df = pd.DataFrame([
    {k: v['value'] if isinstance(v, dict) and 'value' in v else v for k, v in {**metrics_dict, 'run_id': run_id}.items()}
    for run_id, (_, metrics_dict) in results.items()
])

print(results_df.to_string())  # rf-ray: a script prints what the notebook displays (was `results_df`)

# --- cell: End Experiment (the Colab button left out)
experiment.end()
print("Done!")

# --- cell: View RapidFire AI Log Files
# Get the experiment-specific log file
log_file = experiment.get_log_file_path()

print(f"📄 Log File: {log_file}")
print()

if log_file.exists():
    print("=" * 80)
    print(f"Last 30 lines of {log_file.name}:")
    print("=" * 80)
    with open(log_file, 'r', encoding='utf-8') as f:
        lines = f.readlines()
        for line in lines[-30:]:
            print(line.rstrip())
else:
    print(f"❌ Log file not found: {log_file}")
