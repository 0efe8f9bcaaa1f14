"""Evals mode on the executor: corpora, retrieval indexes, prompt managers, generation, one shard.

A pipeline (``spec.PipelineSpec``) is a run; a shard of the eval set is a chunk. The executor's
``PipelineEngine`` (``engine.py``) holds the pipelines placed on it and runs a group of them over
a shard in one step: retrieval and prompts per pipeline, generation of all the group's prompts in
one call, metrics per batch and the pipeline's cumulative metrics with confidence intervals
(``policies.intervals``). The other files:

* ``corpus.py``: each distinct corpus stored once in the experiment directory, read back here;
* ``retrieval.py``, ``bm25.py``: indexes built once per distinct (corpus, splitter, embedding);
* ``prompts.py``: instructions and few-shot examples;
* ``serving.py``: which engine serves a local generator (vLLM or the resident model);
* ``generate.py``: the resident model, every pipeline's rows in one batched ``generate``;
* ``vllm_generator.py``: a vLLM engine, adapters as LoRA requests;
* ``api_client.py``: OpenAI-compatible endpoints, rate limits and retries.
"""
