"""Evals mode: many RAG and prompt pipelines compared at once on the resident model.

    from rf_ray import Experiment
    from rf_ray.automl import List, RFGridSearch, RFLangChainRagSpec, RFvLLMModelConfig

    experiment = Experiment("rag-sweep", mode="evals")
    results = experiment.run_evals(RFGridSearch(config_set), dataset, num_shards=4, seed=42)

What users write lives in ``configs`` (RapidFire AI's ``RFLangChainRagSpec``,
``RFPromptManager``, ``RFvLLMModelConfig``, ``RFAPIModelConfig``); ``space`` lays a config set
out for ``RFGridSearch`` / ``RFRandomSearch``; ``build`` checks one concrete pipeline and
resolves it into the executor's records; ``metrics`` has ready-made retrieval and generation
metrics in RapidFire's shapes. Guide: docs/guides/evals.md.
"""

from rf_ray.evals.configs import (
    RFAPIModelConfig,
    RFLangChainRagSpec,
    RFPromptManager,
    RFvLLMModelConfig,
)

__all__ = ["RFAPIModelConfig", "RFLangChainRagSpec", "RFPromptManager", "RFvLLMModelConfig"]
