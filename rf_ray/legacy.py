"""Fields of the TRL and transformers releases RapidFire AI pins, under today's names.

RapidFire AI pins TRL 0.21 and transformers 4.5x; rf-ray runs on TRL 1.x and transformers 5.x.
A notebook written for those releases sets fields that have since been renamed or moved. Each
is accepted, rewritten to today's way before TRL or transformers see it (so the stored config,
the MLflow params and the base model's identity all use today's names), and reported with ONE
``LegacyFieldWarning`` per field per ``run_fit`` naming today's way (``warn_legacy``).

The table comes from the changelogs and pull requests of both projects, not from the notebooks
alone (docs/coming-from-rapidfire.md lists it with its sources):

* transformers #41326 (5.0): ``warmup_ratio`` deprecated, removed in 5.2; ``warmup_steps`` takes
  a float below 1 as a ratio of the total steps.
* transformers #41287 (5.0): ``load_in_4bit`` / ``load_in_8bit`` (and the ``bnb_*`` keywords
  that came with them) removed from ``from_pretrained``: a ``quantization_config``.
* transformers 4.56: ``torch_dtype`` renamed ``dtype`` (still accepted by 5.x, with a notice).
* transformers 4.46: ``evaluation_strategy`` -> ``eval_strategy``, ``include_inputs_for_metrics``
  -> ``include_for_metrics``; 5.0 (#41404 and others) removed ``per_gpu_*_batch_size``,
  ``adafactor``, ``torchdynamo``, ``use_flash_attention_2``, ``use_auth_token``, ...
* transformers 5.x: ``gradient_checkpointing`` / ``gradient_checkpointing_kwargs`` deprecated
  for ``activation_checkpointing`` / ``activation_checkpointing_kwargs`` (removal in v6).
* TRL 0.20: SFT's ``max_seq_length`` -> ``max_length``; TRL 1.x (the DPO refactor, #3906, and
  GRPO's follow-ups): ``use_liger_loss`` -> ``use_liger_kernel``, DPO's ``rpo_alpha`` -> an
  ``"sft"`` term in ``loss_type`` with its weight, GRPO's ``vllm_guided_decoding_regex`` ->
  ``vllm_structured_outputs_regex`` and ``wandb_log_unique_prompts`` -> ``log_unique_prompts``.

Fields removed with nothing to rename them to are in ``rf_ray.compat`` (accepted and ignored,
or refused); what a field needs installed (bitsandbytes for 8-bit optimizers and quantized
bases) is checked there too (``check_requirements``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from policies.errors import ConfigError
from policies.redact import shown

__all__ = [
    "LEGACY_MODEL_KWARGS",
    "LEGACY_TRAINER_FIELDS",
    "LegacyFieldWarning",
    "is_legacy_trainer_field",
    "modernize_model_kwargs",
    "modernize_training_args",
    "warn_legacy",
]


class LegacyFieldWarning(UserWarning):
    """A field of an older TRL or transformers release, accepted under today's name.

    Shown once per field per ``run_fit``; the message names today's way. Silence it with
    ``warnings.filterwarnings("ignore", category=rf_ray.LegacyFieldWarning)``."""


Args = dict[str, Any]


@dataclass(frozen=True)
class _Rename:
    """One legacy field: what it became (for the message) and how to rewrite a config."""

    today: str
    """Today's way, as the warning shows it."""
    rewrite: Callable[[Args, Any], None]
    """Put the value into ``args`` today's way (the legacy key is already removed)."""


def _to(name: str) -> Callable[[Args, Any], None]:
    def rewrite(args: Args, value: Any) -> None:
        args.setdefault(name, value)  # today's field, if also set, wins

    return rewrite


def _warmup(args: Args, value: Any) -> None:
    # transformers 4: a warmup_steps > 0 overrode warmup_ratio; keep that precedence.
    if not args.get("warmup_steps"):
        args["warmup_steps"] = value


def _adafactor(args: Args, value: Any) -> None:
    if value:
        args.setdefault("optim", "adafactor")


def _inputs_for_metrics(args: Args, value: Any) -> None:
    if value:
        args.setdefault("include_for_metrics", ["inputs"])


def _rpo_alpha(args: Args, value: Any) -> None:
    """RPO = the preference loss + ``rpo_alpha`` x the NLL of the chosen answers: TRL 1.x spells
    it as an extra ``"sft"`` loss term with that weight."""
    if value is None:
        return
    losses = args.get("loss_type", "sigmoid")
    losses = [losses] if isinstance(losses, str) else list(losses)
    weights = list(args.get("loss_weights") or [1.0] * len(losses))
    if "sft" in losses:
        raise ConfigError(
            f"training_args.rpo_alpha={value!r} with loss_type={losses!r}: both add the SFT "
            "term; drop rpo_alpha and set its weight in loss_weights"
        )
    args["loss_type"], args["loss_weights"] = [*losses, "sft"], [*weights, float(value)]


LEGACY_TRAINER_FIELDS: dict[str, _Rename] = {
    "warmup_ratio": _Rename("warmup_steps=<the ratio> (a float below 1 is a ratio)", _warmup),
    "evaluation_strategy": _Rename("eval_strategy", _to("eval_strategy")),
    "per_gpu_train_batch_size": _Rename(
        "per_device_train_batch_size", _to("per_device_train_batch_size")
    ),
    "per_gpu_eval_batch_size": _Rename(
        "per_device_eval_batch_size", _to("per_device_eval_batch_size")
    ),
    "include_inputs_for_metrics": _Rename('include_for_metrics=["inputs"]', _inputs_for_metrics),
    "adafactor": _Rename('optim="adafactor"', _adafactor),
    "torchdynamo": _Rename("torch_compile_backend", _to("torch_compile_backend")),
    "max_seq_length": _Rename("max_length", _to("max_length")),
    "use_liger_loss": _Rename("use_liger_kernel", _to("use_liger_kernel")),
    "rpo_alpha": _Rename('loss_type=[..., "sft"] with loss_weights=[..., rpo_alpha]', _rpo_alpha),
    "vllm_guided_decoding_regex": _Rename(
        "vllm_structured_outputs_regex", _to("vllm_structured_outputs_regex")
    ),
    "wandb_log_unique_prompts": _Rename("log_unique_prompts", _to("log_unique_prompts")),
    "gradient_checkpointing": _Rename("activation_checkpointing", _to("activation_checkpointing")),
    "gradient_checkpointing_kwargs": _Rename(
        "activation_checkpointing_kwargs", _to("activation_checkpointing_kwargs")
    ),
}
"""TRL config fields (``training_args``) of TRL 0.21 / transformers 4.5x (and a few older
names their notebooks still carry) rewritten to today's."""

BNB_KEYWORDS = (
    "load_in_4bit", "load_in_8bit", "bnb_4bit_compute_dtype", "bnb_4bit_quant_type",
    "bnb_4bit_use_double_quant", "bnb_4bit_quant_storage", "llm_int8_threshold",
    "llm_int8_skip_modules", "llm_int8_enable_fp32_cpu_offload", "llm_int8_has_fp16_weight",
)  # fmt: skip
"""``from_pretrained`` keywords transformers 4 turned into a ``BitsAndBytesConfig``."""

LEGACY_MODEL_KWARGS: dict[str, str] = {
    "torch_dtype": "dtype",
    "load_in_4bit": 'quantization_config={"load_in_4bit": True, ...} (a BitsAndBytesConfig)',
    "load_in_8bit": 'quantization_config={"load_in_8bit": True, ...} (a BitsAndBytesConfig)',
    "use_flash_attention_2": 'attn_implementation="flash_attention_2"',
    "use_auth_token": "token",
}
"""``model_kwargs`` (``from_pretrained`` keywords) of transformers 4 -> today's way."""


def is_legacy_trainer_field(name: str) -> bool:
    """Whether ``name`` is a TRL config field of the pinned releases that rf-ray renames."""
    return name in LEGACY_TRAINER_FIELDS


def modernize_training_args(args: Args) -> tuple[Args, dict[str, str]]:
    """``args`` with its legacy fields rewritten today's way, and one note per legacy field
    (``{field: message}``). A field TRL still has under the same name is left alone."""
    out = dict(args)
    notes: dict[str, str] = {}
    for name, rename in LEGACY_TRAINER_FIELDS.items():
        if name not in out:
            continue
        value = out.pop(name)
        rename.rewrite(out, value)
        notes[name] = (
            f"training_args.{name}={shown(name, value)} is the field of an older TRL/transformers; "
            f"rf-ray runs it as {rename.today}, today's way"
        )
    if out.get("reference_free"):
        raise ConfigError(
            "training_args.reference_free=True is not supported: TRL 1.x removed reference-free "
            "DPO, and rf-ray's DPO reference is the resident base with the run's adapter "
            "disabled; drop reference_free"
        )
    if "reference_free" in out:
        del out["reference_free"]
        notes["reference_free"] = (
            "training_args.reference_free=False is the default of an older TRL (removed in "
            "TRL 1.x); it is dropped"
        )
    return out, notes


def modernize_model_kwargs(kwargs: Args) -> tuple[Args, dict[str, str]]:
    """``model_kwargs`` with transformers 4's keywords rewritten today's way (``torch_dtype`` ->
    ``dtype``; ``load_in_4bit`` and the ``bnb_*`` keywords -> one ``quantization_config`` dict,
    which ``from_pretrained`` takes as it takes a ``BitsAndBytesConfig``), and one note per
    legacy keyword. A ``BitsAndBytesConfig`` object becomes its dict (JSON, so it can be stored
    and compared: a quantized base is another base)."""
    out = dict(kwargs)
    notes: dict[str, str] = {}

    def note(name: str, value: Any) -> None:
        notes[f"model_kwargs.{name}"] = (
            f"model_kwargs.{name}={shown(name, value)} is a keyword of transformers 4; rf-ray "
            "passes "
            f"{LEGACY_MODEL_KWARGS.get(name, 'quantization_config')}, today's way"
        )

    if "torch_dtype" in out:
        value = out.pop("torch_dtype")
        out.setdefault("dtype", value)
        note("torch_dtype", value)
    for name, new, new_value in (
        ("use_flash_attention_2", "attn_implementation", "flash_attention_2"),
        ("use_auth_token", "token", None),
    ):
        if name in out:
            value = out.pop(name)
            if value:
                out.setdefault(new, new_value if new_value is not None else value)
            note(name, value)
    bnb = {k: out.pop(k) for k in BNB_KEYWORDS if k in out}
    if bnb:
        if "quantization_config" in out:
            raise ConfigError(
                f"model_kwargs sets quantization_config and {sorted(bnb)}; give the "
                "quantization once, in quantization_config"
            )
        if bnb.get("load_in_4bit") or bnb.get("load_in_8bit"):
            for name in ("load_in_4bit", "load_in_8bit"):
                if name in bnb:
                    note(name, bnb[name])
            out["quantization_config"] = _jsonable_dtypes(bnb)
        else:
            first = next(iter(bnb))
            notes[f"model_kwargs.{first}"] = (
                f"model_kwargs {', '.join(f'{k}={v!r}' for k, v in bnb.items())}: keywords of "
                "transformers 4 that quantize nothing here; rf-ray dropped them (the base "
                "loads unquantized, as it would without them)"
            )
    if "quantization_config" in out:
        out["quantization_config"] = _as_dict(out["quantization_config"])
    return out, notes


def _jsonable_dtypes(values: Args) -> Args:
    """torch dtypes as their names (``BitsAndBytesConfig`` takes either)."""
    return {
        k: str(v).removeprefix("torch.") if type(v).__name__ == "dtype" else v
        for k, v in values.items()
    }


def _as_dict(config: Any) -> Any:
    """A transformers quantization config object as the dict of what it sets; a dict (or
    anything else, which ``to_json`` then names) as it is."""
    if isinstance(config, dict) or not type(config).__module__.startswith("transformers."):
        return config
    import inspect

    accepted = set(inspect.signature(type(config).__init__).parameters) - {"self", "kwargs"}
    return _jsonable_dtypes(
        {k: v for k, v in config.to_diff_dict().items() if k in accepted or k == "quant_method"}
    )


def warn_legacy(notes: Sequence[dict[str, str]], where: str = "", stacklevel: int = 3) -> None:
    """One ``LegacyFieldWarning`` per field over all the runs' notes (``RunConfig.legacy``)."""
    seen: dict[str, str] = {}
    for run_notes in notes:
        for field, message in run_notes.items():
            seen.setdefault(field, message)
    for message in seen.values():
        warnings.warn(f"{where}{message}", LegacyFieldWarning, stacklevel=stacklevel)
