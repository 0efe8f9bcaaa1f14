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
    ``knob_template`` one config with its knobs located: the grid/random expander both
                    modes share
    ``evals``       evals mode: RAG spec, prompt manager, generator configs, pipeline checks
    ``automl``      RapidFire AI's ``rapidfireai.automl`` names
    ``compat``      what rf-ray does with TRL and RapidFire fields it ignores or refuses, and
                    what a field needs installed (bitsandbytes, ...) or a CUDA GPU for
    ``legacy``      fields of the TRL/transformers releases RapidFire pins, under today's names
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
    ``cluster``     connect to Ray, cluster.json, whether its driver is gone, the scheduler's name
    ``experiment``  Experiment, the user's handle: run_fit, results, IC ops, Tune hooks
    ``ops``         interactive control of a running experiment (stop, resume, clone, ...)
    ``steerable``   whether an experiment can take ops now, read from its directory (no Ray)
    ``remote``      ops from a short-lived child process (``rf-ray ops``, the dashboard)
    ``live``        the live terminal view while run_fit waits
    ``summary``     what run_fit says when it starts (pruning) and ends (each run's outcome)
    ``notebook``    InteractiveController: stop/resume/delete/clone buttons under a cell
    ``background``  run_fit in a background thread where RapidFire's does (Colab)
    ``samples``     a run's last chunk-end generations, read back (status, live view, CLI)
Around it
    ``cli``         the ``rf-ray`` command, one module per command group
    ``dashboard``   ``rf-ray dashboard``: the web page to watch and steer experiments
    ``tune``        Ray Tune in three directions (flat knobs, searcher, shared, driver)
    ``toy``         the embedded tiny model, tokenizer and datasets for CPU runs and tests
    ``config``      kept only for experiment directories written before this layout
"""

from typing import TYPE_CHECKING, Any

from actors.logs import quiet as _quiet
from policies.errors import (
    ConfigError,
    DamagedFileError,
    ExperimentExistsError,
    IllegalTransitionError,
    InfrastructureError,
    NoRunTrainedError,
    OpError,
    RFRayError,
    RunFailedError,
    UnknownKnobError,
    UntrustedDirectoryError,
)
from policies.fusion import FusionPolicy
from policies.interval_pruning import IntervalPruner
from policies.pruning import (
    ASHA,
    MedianStopping,
    NoPruning,
    Pruner,
    SuccessiveHalving,
    ThresholdPruner,
)
from policies.state import RunStatus
from rf_ray.compat import IgnoredFieldWarning, ReplacedFieldWarning
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
from rf_ray.experiment import Experiment
from rf_ray.legacy import LegacyFieldWarning
from rf_ray.search import ConfigGroup, RFGridSearch, RFRandomSearch
from rf_ray.specs import RunConfig

__version__ = "0.1.0"
_quiet()  # drop the lines rf-ray itself causes (actors/logs.py), before Ray, PEFT or MLflow speak

if TYPE_CHECKING:  # loaded on use by __getattr__ below
    from rf_ray.notebook import InteractiveController
    from rf_ray.tune import RFOptuna


def __getattr__(name: str) -> Any:
    """``RFOptuna`` lives in ``rf_ray.tune`` (Ray Tune is slow to import) and
    ``InteractiveController`` in ``rf_ray.notebook`` (it needs ipywidgets): loaded on use."""
    if name == "RFOptuna":
        from rf_ray.tune import RFOptuna

        return RFOptuna
    if name == "InteractiveController":
        from rf_ray.notebook import InteractiveController

        return InteractiveController
    raise AttributeError(f"module 'rf_ray' has no attribute {name!r}")


__all__ = [
    "ASHA",
    "ConfigError",
    "ConfigGroup",
    "DamagedFileError",
    "Experiment",
    "ExperimentExistsError",
    "FusionPolicy",
    "IgnoredFieldWarning",
    "IllegalTransitionError",
    "InfrastructureError",
    "InteractiveController",
    "IntervalPruner",
    "LegacyFieldWarning",
    "List",
    "MedianStopping",
    "NoPruning",
    "NoRunTrainedError",
    "OpError",
    "Pruner",
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
    "RFRayError",
    "RFSFTConfig",
    "RFvLLMModelConfig",
    "Range",
    "ReplacedFieldWarning",
    "RunConfig",
    "RunFailedError",
    "RunStatus",
    "SuccessiveHalving",
    "ThresholdPruner",
    "UnknownKnobError",
    "UntrustedDirectoryError",
    "__version__",
]
