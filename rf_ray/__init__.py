"""rf-ray: tune LoRA post-training on the GPUs you have.

One resident base model, many configurations as LoRA adapters, trained chunk by chunk on Ray
actors and pruned with successive halving; every run is an MLflow run.

A RapidFire AI script runs with its imports changed: ``from rapidfireai import Experiment`` ->
``from rf_ray import Experiment``, ``from rapidfireai.automl import ...`` ->
``from rf_ray.automl import ...``. ``RFOptuna`` (in ``rf_ray.tune``, it needs Ray Tune and
Optuna: ``pip install "rf-ray[tune]"``) is imported from here on first use.
"""

from typing import TYPE_CHECKING, Any

from policies.errors import (
    ConfigError,
    ExperimentExistsError,
    IllegalTransitionError,
    OpError,
    RFRayError,
    RunFailedError,
    UnknownKnobError,
)
from policies.fusion import FusionPolicy
from policies.pruning import (
    ASHA,
    MedianStopping,
    NoPruning,
    Pruner,
    SuccessiveHalving,
    ThresholdPruner,
)
from policies.state import RunStatus
from rf_ray.compat import IgnoredFieldWarning
from rf_ray.configs import (
    List,
    Range,
    RFDPOConfig,
    RFGRPOConfig,
    RFLoraConfig,
    RFModelConfig,
    RFSFTConfig,
)
from rf_ray.experiment import Experiment
from rf_ray.search import ConfigGroup, RFGridSearch, RFRandomSearch
from rf_ray.specs import RunConfig

__version__ = "0.1.0"

if TYPE_CHECKING:  # loaded on use by __getattr__ below
    from rf_ray.tune import RFOptuna


def __getattr__(name: str) -> Any:
    """``RFOptuna`` lives in ``rf_ray.tune`` (Ray Tune is slow to import): load it on use."""
    if name == "RFOptuna":
        from rf_ray.tune import RFOptuna

        return RFOptuna
    raise AttributeError(f"module 'rf_ray' has no attribute {name!r}")


__all__ = [
    "ASHA",
    "ConfigError",
    "ConfigGroup",
    "Experiment",
    "ExperimentExistsError",
    "FusionPolicy",
    "IgnoredFieldWarning",
    "IllegalTransitionError",
    "List",
    "MedianStopping",
    "NoPruning",
    "OpError",
    "Pruner",
    "RFDPOConfig",
    "RFGRPOConfig",
    "RFGridSearch",
    "RFLoraConfig",
    "RFModelConfig",
    "RFOptuna",
    "RFRandomSearch",
    "RFRayError",
    "RFSFTConfig",
    "Range",
    "RunConfig",
    "RunFailedError",
    "RunStatus",
    "SuccessiveHalving",
    "ThresholdPruner",
    "UnknownKnobError",
    "__version__",
]
