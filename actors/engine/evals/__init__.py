"""Evals mode on the executor: retrieval indexes, prompt managers, generation, one shard's step.

A pipeline (``spec.PipelineSpec``) is a run; a shard of the eval set is a chunk. The executor's
``PipelineEngine`` (``engine.py``) holds the pipelines placed on it, builds each retrieval index
once per distinct (corpus, splitter, embedding) (``retrieval.py``) and runs a group of pipelines
over a shard in one step (``step.py``): retrieval and prompts per pipeline, generation of all the
group's prompts in one batched ``generate`` on the resident model (``generation.py`` here, over
``actors.engine.generation.generate_multi``), metrics per batch and the pipeline's cumulative
metrics with confidence intervals (``policies.intervals``).
"""
