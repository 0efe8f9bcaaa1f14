"""RapidFire AI's ``rapidfireai.automl`` names, so a RapidFire script changes only its imports:

    from rf_ray.automl import List, Range, RFGridSearch, RFLoraConfig, RFModelConfig, RFSFTConfig
    from rf_ray.automl import RFLangChainRagSpec, RFPromptManager, RFvLLMModelConfig  # evals

``RFOptuna`` needs Ray Tune and Optuna (``pip install "rf-ray[tune]"``); it is loaded on use.
"""

from typing import TYPE_CHECKING, Any

from rf_ray.configs import (
    List,
    Range,
    RFDPOConfig,
    RFGRPOConfig,
    RFLoraConfig,
    RFModelConfig,
    RFSFTConfig,
)
from rf_ray.evals.configs import (
    RFAPIModelConfig,
    RFLangChainRagSpec,
    RFPromptManager,
    RFvLLMModelConfig,
)
from rf_ray.search import RFGridSearch, RFRandomSearch

if TYPE_CHECKING:  # loaded on use by __getattr__ below
    from rf_ray.tune import RFOptuna


def __getattr__(name: str) -> Any:
    if name == "RFOptuna":
        from rf_ray.tune import RFOptuna

        return RFOptuna
    raise AttributeError(f"module 'rf_ray.automl' has no attribute {name!r}")


__all__ = [
    "List",
    "RFAPIModelConfig",
    "RFDPOConfig",
    "RFGRPOConfig",
    "RFGridSearch",
    "RFLangChainRagSpec",
    "RFLoraConfig",
    "RFModelConfig",
    "RFOptuna",
    "RFPromptManager",
    "RFRandomSearch",
    "RFSFTConfig",
    "RFvLLMModelConfig",
    "Range",
]
