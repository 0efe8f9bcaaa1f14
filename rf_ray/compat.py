"""What rf-ray does with the fields a TRL script or a RapidFire AI notebook sets.

TRL config fields that name something rf-ray does itself are accepted: those with a meaning here
are honoured (``HONOURED_TRAINER_FIELDS``), the others ignored with one ``IgnoredFieldWarning``
per field per experiment that says what rf-ray does instead (``ignored_field_warnings``;
``Experiment.run_fit`` shows them). Only what would break the engine is refused, saying why and
what to do (``REFUSED_TRAINER_FIELDS``). ``rapidfire_fields`` does the same for the fields of
RapidFire's ``RFModelConfig`` that rf-ray handles its own way. ``rf_ray.fields`` applies these
rules when a config is written, ``rf_ray.specs`` when its TRL config is built.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Sequence
from typing import Any, Protocol

from policies.errors import ConfigError
from policies.redact import shown

# TRL fields that name something rf-ray does itself. A TRL script or RapidFire tutorial sets
# many of them, so they are accepted. Those with a meaning here are honoured
# (HONOURED_TRAINER_FIELDS); the rest are ignored with one IgnoredFieldWarning per field per
# experiment saying what rf-ray does instead (``ignored_field_warnings``); only what would
# break the engine is refused.
HONOURED_TRAINER_FIELDS = {
    "logging_steps": "how often a run's step metrics go to MLflow (every step goes to the store)",
    "report_to": "rf-ray always logs to MLflow; 'wandb' and 'tensorboard' are also forwarded to "
    "TRL's own integrations when the package is installed",
    "eval_strategy": "'steps' evaluates every eval_steps optimizer steps inside a chunk; every "
    "run is also evaluated at the end of each chunk (pruning compares those)",
    "eval_steps": "with eval_strategy='steps': evaluate every eval_steps optimizer steps",
}
_CHECKPOINTS = "rf-ray checkpoints every run after each slice, in the experiment directory"
_LOGS = "rf-ray keeps every step's metrics in its store and logs them to MLflow every logging_steps"
_HUB = "rf-ray does not push; Experiment.export(run_id, path) writes a run's adapter to push"
_BEST = "the pruner compares runs on its metric; Experiment.get_best_run() picks the best run"
_PRECISION = "rf-ray sets precision itself (bf16 autocast on CUDA, float32 on a CPU)"
_REMOVED = "transformers 5 removed it and rf-ray has no use for it"
IGNORED_TRAINER_FIELDS = {
    "output_dir": "rf-ray writes each run's files under <experiment dir>/runs/<run_id>",
    "overwrite_output_dir": "rf-ray writes each run's files under <experiment dir>/runs/<run_id>",
    "save_strategy": _CHECKPOINTS,
    "save_steps": _CHECKPOINTS,
    "save_total_limit": _CHECKPOINTS,
    "save_only_model": _CHECKPOINTS,
    "save_safetensors": _CHECKPOINTS,
    "logging_strategy": _LOGS,
    "logging_first_step": _LOGS,
    "logging_dir": _LOGS,
    "disable_tqdm": "rf-ray shows its own live view of all runs",
    "use_cpu": "rf-ray picks the device for each run",
    "no_cuda": "rf-ray picks the device for each run",
    "push_to_hub": _HUB,
    "hub_model_id": _HUB,
    "hub_strategy": _HUB,
    "hub_token": _HUB,
    "hub_private_repo": _HUB,
    "run_name": "each run is an MLflow run named run-<run_id>",
    "load_best_model_at_end": _BEST,
    "metric_for_best_model": _BEST + " (set it with run_fit(pruner=SuccessiveHalving(metric=...)))",
    "greater_is_better": _BEST + " (set it with run_fit(pruner=SuccessiveHalving(mode=...)))",
    "resume_from_checkpoint": "rf-ray resumes a whole experiment with Experiment.resume()",
    # transformers 4.5x's TrainingArguments fields that 5.x removed without a successor rf-ray
    # would honour (rf_ray.legacy renames those that have one).
    "use_mps_device": "rf-ray picks the device for each run",
    "half_precision_backend": _PRECISION,
    "fp16_backend": _PRECISION,
    "fp16_opt_level": _PRECISION,
    "include_tokens_per_second": "rf-ray logs each slice's seconds and tokens itself",
    "group_by_length": "rf-ray orders each run's rows itself (seed-shuffled, cut in chunks)",
    "push_to_hub_model_id": _HUB,
    "push_to_hub_organization": _HUB,
    "push_to_hub_token": _HUB,
    "jit_mode_eval": _REMOVED,
    "use_legacy_prediction_loop": _REMOVED,
    "past_index": _REMOVED,
    "ray_scope": _REMOVED,
    "tpu_num_cores": _REMOVED,
    "tpu_metrics_debug": _REMOVED,
    "mp_parameters": _REMOVED,
}
# Fields RapidFire's notebooks set that this TRL release's config for the trainer lacks (older
# TRL had them). Accepted, and ignored with a warning, only where the class has no such field:
# GRPOConfig still has max_completion_length, for example, and there it is honoured.
_RETIRED_LENGTH = (
    "this TRL release's config for this trainer has no such field; SFT and DPO truncate "
    "whole sequences with max_length"
)
_RETIRED_GRPO_PROMPT = (
    "this TRL release's GRPOConfig has no such field: GRPO keeps each prompt whole (shorten "
    "long prompts in the dataset or the formatting_func); max_completion_length bounds what "
    "it generates"
)
_REFERENCE = "rf-ray's DPO reference policy is the resident base with the run's adapter disabled"
RETIRED_TRAINER_FIELDS = {
    "model_adapter_name": _REFERENCE,
    "ref_adapter_name": _REFERENCE,
    "force_use_ref_model": _REFERENCE,
    "max_prompt_length": _RETIRED_LENGTH,
    "max_completion_length": _RETIRED_LENGTH,
    # DPOConfig fields of TRL 0.21 that TRL 1.x dropped (its DPO refactor, TRL #3906).
    "generate_during_eval": "rf-ray scores generations itself at each chunk end: set "
    "RFModelConfig(generation_config=..., eval_metrics_fn=...)",
    "label_pad_token_id": "TRL 1.x masks prompts and padding itself",
    "padding_value": "TRL 1.x pads with the tokenizer's pad token (pad_token= changes it)",
    "ref_model_init_kwargs": _REFERENCE,
    "use_logits_to_keep": "TRL 1.x computes the logits only where the loss needs them",
    "base_model_attribute_name": "TRL 1.x finds the base model itself",
    "tools": "TRL 1.x reads tools from the dataset's 'tools' column",
    "reference_free": _REFERENCE,  # True is refused (rf_ray.legacy.modernize_training_args)
}
# TRL fields that would break the engine: refused, saying why and what to do instead.
REFUSED_TRAINER_FIELDS = {
    "model_init_kwargs": "the base model is loaded once, by create_model_fn, and shared by every "
    "run; put from_pretrained kwargs in RFModelConfig(model_kwargs=...)",
    "deepspeed": "rf-ray keeps one resident base model per executor and trains every run as an "
    "adapter on it; DeepSpeed would shard and own that model. Remove deepspeed=",
    "fsdp": "rf-ray keeps one resident base model per executor and trains every run as an "
    "adapter on it; FSDP would shard and own that model. Remove fsdp= and the fsdp_config= "
    "(and any other fsdp_* field) that goes with it",
    "fsdp_config": "rf-ray does not shard the base model (see fsdp). Remove fsdp_config=",
    "fsdp_min_num_params": "rf-ray does not shard the base model (see fsdp). Remove it",
    "fsdp_transformer_layer_cls_to_wrap": "rf-ray does not shard the base model (see fsdp). "
    "Remove it",
}
# report_to names forwarded to TRL's integrations (the package name to import for each).
FORWARDED_REPORTERS = {"wandb": "wandb", "tensorboard": "tensorboard"}


class _Run(Protocol):
    """What ``ignored_field_warnings`` reads of a run (``rf_ray.specs.RunConfig`` has it). A
    protocol, not an import: ``rf_ray.specs`` imports this module, so importing it back would
    close a circle."""

    trainer_type: str
    training_args: dict[str, Any]
    model_kwargs: dict[str, Any]
    ignored: dict[str, str]

    def trl_fields(self) -> frozenset[str]: ...


class IgnoredFieldWarning(UserWarning):
    """A config field rf-ray accepts but does not use (it does the job itself, another way).

    Shown once per field per experiment; silence it with
    ``warnings.filterwarnings("ignore", category=rf_ray.IgnoredFieldWarning)``."""


def forwarded_reporters(report_to: Any) -> tuple[list[str], list[str]]:
    """``(forwarded, notes)`` for a TRL ``report_to`` value: the integrations handed to TRL
    (wandb, tensorboard, when installed) and one note per name rf-ray does not forward."""
    if report_to is None:
        return [], []
    names = [report_to] if isinstance(report_to, str) else list(report_to)
    if "all" in names:
        names = [n for n in FORWARDED_REPORTERS if importlib.util.find_spec(n) is not None]
    forwarded, notes = [], []
    for name in names:
        if name in ("none", "mlflow"):
            continue  # rf-ray logs every run to MLflow itself
        package = FORWARDED_REPORTERS.get(name)
        if package is None:
            notes.append(
                f"report_to={name!r} is not forwarded: rf-ray logs every run to MLflow and "
                f"forwards only {', '.join(FORWARDED_REPORTERS)}"
            )
        elif importlib.util.find_spec(package) is None:
            notes.append(
                f"report_to={name!r} is not forwarded: the {package} package is not installed "
                f"(pip install {package}); rf-ray still logs every run to MLflow"
            )
        else:
            forwarded.append(name)
    return forwarded, notes


def ignored_field_warnings(runs: Sequence[_Run], has_eval: bool = True) -> dict[str, str]:
    """``{field: message}`` for every config field the runs set that rf-ray accepts but does not
    use as TRL would; ``Experiment.run_fit`` shows each once as an ``IgnoredFieldWarning``."""
    out: dict[str, str] = {}
    for run in runs:
        for name, value in run.training_args.items():
            if name in RETIRED_TRAINER_FIELDS and name not in run.trl_fields():
                what = RETIRED_TRAINER_FIELDS[name]
                if (name, run.trainer_type) == ("max_prompt_length", "GRPO"):
                    what = _RETIRED_GRPO_PROMPT
                out.setdefault(
                    name, f"training_args.{name}={shown(name, value)} is ignored: {what}"
                )
            elif name in IGNORED_TRAINER_FIELDS:
                what = IGNORED_TRAINER_FIELDS[name]
                out.setdefault(
                    name, f"training_args.{name}={shown(name, value)} is ignored: {what}"
                )
            elif name == "report_to":
                for note in forwarded_reporters(value)[1]:
                    out.setdefault(f"report_to:{note}", f"training_args.{note}")
            elif name == "eval_strategy" and value not in ("steps", "no", "epoch"):
                pass  # TRL rejects it when the config is built
            elif name == "eval_strategy" and value != "steps":
                out.setdefault(
                    name,
                    f"training_args.eval_strategy={value!r}: rf-ray evaluates every run at the "
                    "end of each chunk whatever eval_strategy says (pruning compares those); "
                    "eval_strategy='steps' with eval_steps adds evaluations inside a chunk",
                )
            elif name == "eval_strategy" and not has_eval:
                out.setdefault(
                    name,
                    "training_args.eval_strategy='steps' is ignored: run_fit has no eval_dataset",
                )
        for name, note in run.ignored.items():
            out.setdefault(name, note)
    return out


# RapidFire AI's tracking switches (environment variables its notebooks set), and what each
# set to the value shown asks for that rf-ray does not do.
RAPIDFIRE_TRACKING_SWITCHES = {
    ("RF_MLFLOW_ENABLED", "false"): "rf-ray logs every run to MLflow whatever it says (its "
    "store; `rf-ray dashboard` or `mlflow ui` shows them)",
    ("RF_TENSORBOARD_ENABLED", "true"): "rf-ray writes no TensorBoard logs of its own; "
    "report_to='tensorboard' in training_args forwards each run's step metrics to TRL's "
    "TensorBoard integration (with tensorboard installed)",
    ("RF_TRACKIO_ENABLED", "true"): "rf-ray logs every run to MLflow and forwards only "
    f"report_to={', '.join(repr(n) for n in FORWARDED_REPORTERS)} to TRL's integrations",
}


def rapidfire_env_notes(environ: Any) -> dict[str, str]:
    """``{variable: note}`` for each of RapidFire's tracking switches set in ``environ`` (e.g.
    ``os.environ``) to a value rf-ray does not honour; ``run_fit`` shows each once."""
    notes = {}
    for (name, value), what in RAPIDFIRE_TRACKING_SWITCHES.items():
        given = environ.get(name)
        if given is not None and given.strip().lower() == value:
            notes[name] = f"RapidFire's {name}={given!r} is ignored: {what}"
    return notes


def run_fit_argument_notes(num_gpus: Any, monte_carlo_simulations: Any) -> dict[str, str]:
    """``{argument: note}`` for RapidFire's ``run_fit`` arguments rf-ray accepts and ignores:
    ``num_gpus`` (GPUs per run, for FSDP; its default, 1, is what rf-ray does) and
    ``monte_carlo_simulations`` (RapidFire's scheduler's). A bad value is refused."""
    notes = {}
    if num_gpus is not None:
        if isinstance(num_gpus, bool) or not isinstance(num_gpus, int) or num_gpus < 1:
            raise ConfigError(f"run_fit(num_gpus={num_gpus!r}): num_gpus must be an integer >= 1")
        if num_gpus != 1:
            notes["run_fit.num_gpus"] = (
                f"run_fit(num_gpus={num_gpus!r}) is ignored: each run trains on one executor "
                "(one GPU) that holds the base model; run_fit(num_executors=N) spreads runs "
                "over N GPUs"
            )
    if monte_carlo_simulations is not None:
        notes["run_fit.monte_carlo_simulations"] = (
            f"run_fit(monte_carlo_simulations={monte_carlo_simulations!r}) is ignored: rf-ray's "
            "scheduler gives the next slice to the run with the least progress (no simulation)"
        )
    return notes


# ---------------------------------------------------------------------- packages and devices
_BNB = "bitsandbytes"
# optim= values (transformers' OptimizerNames) that import a package of their own, by prefix.
OPTIMIZER_PACKAGES = {
    "adamw_8bit": _BNB, "adamw_bnb_8bit": _BNB, "paged_": _BNB, "lion_": _BNB,
    "rmsprop_bnb": _BNB, "ademamix": _BNB, "galore_": "galore_torch", "lomo": "lomo_optim",
    "adalomo": "lomo_optim", "schedule_free_": "schedulefree", "apollo_": "apollo_torch",
    "grokadamw": "grokadamw", "stable_adamw": "optimi",
}  # fmt: skip
_PIP = {"galore_torch": "galore-torch", "lomo_optim": "lomo-optim", "apollo_torch": "apollo-torch",
        "optimi": "torch-optimi"}  # fmt: skip
_FLASH = ("flash_attention_2", "flash_attention_3")


class ReplacedFieldWarning(UserWarning):
    """A field this machine cannot honour (a quantized base or flash attention without CUDA),
    replaced by what it can; the message says what was replaced and where the original runs.
    Shown once per field per ``run_fit``."""


def _installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def _missing(field: str, value: Any, package: str) -> ConfigError:
    pip = _PIP.get(package, package)
    extra = ' (pip install "rf-ray[rapidfire]" brings it)' if package == _BNB else ""
    return ConfigError(
        f"{field}={shown(field, value)} needs the {package} package, which is not installed: "
        f"pip install {pip}{extra}, or choose another value"
    )


def check_requirements(runs: Sequence[_Run], cuda: bool | None = None) -> dict[str, str]:
    """Refuse, before anything starts, a run whose fields need a package that is not installed
    (an 8-bit optimizer or a quantized base without bitsandbytes, ...). Where only the device
    is missing (``cuda``: this machine has a CUDA GPU; asked of torch when None), replace the
    field in the run and return ``{field: message}`` for one ``ReplacedFieldWarning`` each: a
    bitsandbytes-quantized base is loaded unquantized on a CPU (bitsandbytes' CPU kernels are
    for inference: their backward is not registered with autograd and adapters stop learning),
    flash attention becomes PyTorch's sdpa."""
    notes: dict[str, str] = {}
    for run in runs:
        optim = run.training_args.get("optim")
        if isinstance(optim, str):
            for prefix, package in OPTIMIZER_PACKAGES.items():
                if optim.startswith(prefix) and not _installed(package):
                    raise _missing("training_args.optim", optim, package)
        quantization = run.model_kwargs.get("quantization_config")
        bnb = isinstance(quantization, dict) and bool(
            quantization.get("load_in_4bit") or quantization.get("load_in_8bit")
        )
        if bnb and not _installed(_BNB):
            raise _missing("model_kwargs.quantization_config", quantization, _BNB)
        attn = run.model_kwargs.get("attn_implementation")
        if attn in _FLASH and not _installed("flash_attn"):
            raise _missing("model_kwargs.attn_implementation", attn, "flash_attn")
        if not (bnb or attn in _FLASH) or _has_cuda(cuda):
            continue
        kwargs = dict(run.model_kwargs)
        if bnb:
            del kwargs["quantization_config"]
            notes.setdefault("quantization_config", (
                f"model_kwargs.quantization_config={quantization!r} is replaced: this machine "
                "has no CUDA GPU, so the base model is loaded unquantized (bitsandbytes' CPU "
                "kernels are for inference; their backward is not registered with autograd). "
                "On a CUDA GPU the same config trains QLoRA: one shared quantized base, the "
                "runs' adapters time-sliced (fused slices need unquantized Linear layers)"
            ))  # fmt: skip
        if attn in _FLASH:
            kwargs["attn_implementation"] = "sdpa"
            notes.setdefault("attn_implementation", (
                f"model_kwargs.attn_implementation={attn!r} is replaced by 'sdpa': flash "
                "attention needs a CUDA GPU, which this machine does not have"
            ))  # fmt: skip
        run.model_kwargs = kwargs
    return notes


def _has_cuda(cuda: bool | None) -> bool:
    if cuda is not None:
        return cuda
    import torch

    return bool(torch.cuda.is_available())


def warn_replaced(notes: dict[str, str], where: str = "", stacklevel: int = 3) -> None:
    """One ``ReplacedFieldWarning`` per note of ``check_requirements``."""
    for message in notes.values():
        warnings.warn(f"{where}{message}", ReplacedFieldWarning, stacklevel=stacklevel)


def rapidfire_fields(
    names: set[str],
    tokenizer: Any,
    model_type: Any,
    ref_model_name: Any,
    ref_model_type: Any,
    ref_model_kwargs: Any,
    num_gpus: Any,
) -> dict[str, str]:
    """Check RapidFire's RFModelConfig fields rf-ray handles its own way; return
    ``{field: note}`` for those accepted but not used (``ignored_field_warnings`` shows them)."""
    notes: dict[str, str] = {}
    if model_type not in (None, "causal_lm"):
        raise ConfigError(
            f"model_type={model_type!r} is not supported: rf-ray trains causal language models "
            "(SFT, DPO, GRPO with LoRA); use model_type='causal_lm' or leave it out"
        )
    if tokenizer is not None:
        if not isinstance(tokenizer, str):
            raise TypeError(f"tokenizer must be a str (a model name or path), got {tokenizer!r}")
        if tokenizer not in names:
            notes["tokenizer"] = (
                f"tokenizer={tokenizer!r} is ignored: rf-ray loads the tokenizer with the model "
                "in create_model_fn(model_config) -> (model, tokenizer); load it there"
            )
    if ref_model_name is not None and ref_model_name not in names:
        raise ConfigError(
            f"ref_model_name={ref_model_name!r} is not supported: rf-ray's DPO reference policy is "
            "the resident base model with the run's adapter disabled (no second copy of the "
            "weights), so the reference is always the base model; drop ref_model_name"
        )
    for field, value in (
        ("ref_model_name", ref_model_name),
        ("ref_model_type", ref_model_type),
        ("ref_model_kwargs", ref_model_kwargs),
    ):
        if value is not None:
            notes[field] = (
                f"{field}={value!r} is ignored: the DPO reference policy is the base model itself "
                "with the run's adapter disabled"
            )
    if num_gpus is not None:
        if isinstance(num_gpus, bool) or not isinstance(num_gpus, int) or num_gpus < 0:
            raise ConfigError(f"num_gpus={num_gpus!r} must be an integer >= 0")
        notes["num_gpus"] = (
            f"num_gpus={num_gpus!r} is ignored: each run trains on one executor (one GPU) that "
            "holds the base model; run_fit(num_executors=N) spreads runs over N GPUs"
        )
    return notes


def rapidfire_resources(where: str, **given: Any) -> list[str]:
    """RapidFire AI's resource arguments (``Experiment``'s ``num_cpus``, ``num_gpus``;
    ``run_evals``' ``num_actors``, ``gpus_per_actor``, ``cpus_per_actor``): each checked, and a
    note for each given, since rf-ray places the work itself."""
    notes = []
    for name, value in given.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ConfigError(f"{where}({name}={value!r}) must be a number >= 0")
        notes.append(
            f"{where}({name}={value!r}) is ignored: rf-ray places the work itself, one executor "
            "per GPU of the Ray cluster (one on the CPU without a GPU) holding the resident "
            "model, and API pipelines' requests beside it; run_fit/run_evals(num_executors=N) "
            "uses N GPUs"
        )
    return notes


__all__ = [
    "FORWARDED_REPORTERS",
    "HONOURED_TRAINER_FIELDS",
    "IGNORED_TRAINER_FIELDS",
    "OPTIMIZER_PACKAGES",
    "RAPIDFIRE_TRACKING_SWITCHES",
    "REFUSED_TRAINER_FIELDS",
    "RETIRED_TRAINER_FIELDS",
    "IgnoredFieldWarning",
    "ReplacedFieldWarning",
    "check_requirements",
    "forwarded_reporters",
    "ignored_field_warnings",
    "rapidfire_env_notes",
    "rapidfire_fields",
    "rapidfire_resources",
    "run_fit_argument_notes",
    "warn_replaced",
]
