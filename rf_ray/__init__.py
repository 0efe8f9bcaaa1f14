"""rf-ray: tune LoRA post-training on the GPUs you have.

One resident base model, many configurations as LoRA adapters, trained chunk by chunk on Ray
actors and pruned with successive halving; every run is an MLflow run.
"""

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
from rf_ray.config import (
    List,
    Range,
    RFDPOConfig,
    RFGRPOConfig,
    RFLoraConfig,
    RFModelConfig,
    RFSFTConfig,
    RunConfig,
)
from rf_ray.experiment import Experiment
from rf_ray.search import ConfigGroup, RFGridSearch, RFRandomSearch

__version__ = "0.1.0"

__all__ = [
    "ASHA",
    "ConfigError",
    "ConfigGroup",
    "Experiment",
    "ExperimentExistsError",
    "FusionPolicy",
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
