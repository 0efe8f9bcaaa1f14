"""rf-ray: tune LoRA post-training on the GPUs you have.

One resident base model, many configurations as LoRA adapters, trained chunk by chunk on Ray
actors and pruned with successive halving; every run is an MLflow run.

A RapidFire AI script runs with its imports changed: ``from rapidfireai import Experiment`` ->
``from rf_ray import Experiment``, ``from rapidfireai.automl import ...`` ->
``from rf_ray.automl import ...``. ``RFOptuna`` (in ``rf_ray.tune``, it needs Ray Tune and
Optuna: ``pip install "rf-ray[tune]"``) is imported from here on first use.

Where things live (``rf_ray/`` is the user API and the driver; ``actors/`` and ``policies/``
are the engine below it):

What users write
    ``configs``     RFModelConfig, RFLoraConfig, RF{SFT,DPO,GRPO}Config
    ``knobs``       the search knobs List and Range
    ``fields``      which TRL/PEFT fields a config may set, and the rules for their values
    ``search``      config groups: RFGridSearch, RFRandomSearch (and the ConfigGroup hooks)
    ``automl``      RapidFire AI's ``rapidfireai.automl`` names
    ``compat``      what rf-ray does with TRL and RapidFire fields it ignores or refuses
    ``data``        datasets in (lists, pandas, HF datasets), column checks, fingerprints
    ``metrics``     generation metrics by name (exact_match, token_f1, rougeL, bleu)
    ``metric_names`` which chunk metrics a run reports; a pruner metric none reports is refused
From configs to running actors
    ``specs``       RunConfig (one concrete run) -> TRL/PEFT configs -> RunSpec; chunk plans;
                    the one JSON sanitiser and the one "keys that differ between runs"
    ``spec_store``  run specs and the model factory on disk (what a resume reads back)
    ``plan``        Plan: an experiment's settings (one ExperimentSettings) and runs, new from
                    run_fit or from the store
    ``session``     start, resume, wait and stop an experiment's actors (one start path)
    ``cluster``     connect to Ray, cluster.json, the experiment lock, the scheduler's name
    ``experiment``  Experiment, the user's handle: run_fit, results, IC ops, Tune hooks
    ``ops``         interactive control of a running experiment (stop, resume, clone, ...)
    ``live``        the live terminal view while run_fit waits
    ``samples``     a run's last chunk-end generations, read back (status, live view, CLI)
Around it
    ``cli``         the ``rf-ray`` command, one module per command group
    ``dashboard``   ``rf-ray dashboard``: the web page to watch and steer experiments
    ``tune``        Ray Tune in three directions (flat knobs, searcher, shared, driver)
    ``toy``         the embedded tiny model, tokenizer and datasets for CPU runs and tests
    ``config``      kept only for experiment directories written before this layout
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
