"""Dataset preparation done once per distinct (tokenizer, processing settings), not once per run.

``SFTTrainer.__init__`` formats, tokenizes, builds labels, truncates (or packs) the whole
training and eval sets: the same work for every run of a grid that differs only in optimizer or
LoRA knobs. The executor builds the first trainer of each distinct setting normally, keeps the
datasets it prepared, and hands them to the next trainers with the same setting together with
TRL's own ``dataset_kwargs={"skip_prepare_dataset": True}``, so TRL's preparation code (not a
re-implementation) produced every row each run trains on; the rows are the very same ones.

The setting is the base model (its tokenizer), the formatting function (by its pickled bytes:
equal code and captured values) and every ``SFTConfig`` field that ``SFTTrainer`` reads while
preparing (``PREP_FIELDS``); ``seed`` too when ``shuffle_dataset`` shuffles with it. A run whose
own ``dataset_kwargs`` already skip preparation, and DPO and GRPO (their trainers prepare
differently), are always prepared by their own trainer.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from typing import Any

from actors.engine.spec import RunSpec

logger = logging.getLogger(__name__)

PREP_FIELDS = (
    "dataset_text_field",
    "max_length",
    "truncation_mode",
    "packing",
    "packing_strategy",
    "eval_packing",
    "padding_free",
    "completion_only_loss",
    "assistant_only_loss",
    "shuffle_dataset",
    "chat_template_path",
    "eos_token",
    "pad_token",
    "dataset_kwargs",
)
"""``SFTConfig`` fields that change what ``SFTTrainer._prepare_dataset`` produces (TRL 1.16)."""


@dataclasses.dataclass
class Prepared:
    """The datasets one trainer prepared, shared with the runs that have its setting."""

    train: Any
    eval: Any
    runs: int = 1
    """Trainers built on these datasets (the first one prepared them)."""


class PreparedDatasets:
    """Prepared datasets by setting (see the module docstring); one per executor."""

    def __init__(self) -> None:
        self.by_key: dict[str, Prepared] = {}

    @staticmethod
    def key(spec: RunSpec, args: Any) -> str | None:
        """The run's preparation setting, or ``None`` when its trainer must prepare itself."""
        if spec.trainer_type != "SFT":
            return None
        kwargs = getattr(args, "dataset_kwargs", None) or {}
        if kwargs.get("skip_prepare_dataset"):
            return None
        import cloudpickle

        values = {name: repr(getattr(args, name, None)) for name in PREP_FIELDS}
        if getattr(args, "shuffle_dataset", False):
            values["seed"] = repr(args.seed)
        func = spec.formatting_func
        values["formatting_func"] = (
            "" if func is None else hashlib.sha256(cloudpickle.dumps(func)).hexdigest()
        )
        text = repr((spec.model_key, sorted(values.items())))
        return hashlib.sha256(text.encode()).hexdigest()

    def lookup(self, key: str | None) -> Prepared | None:
        return None if key is None else self.by_key.get(key)

    def keep(self, key: str | None, trainer: Any) -> None:
        """Keep what ``trainer`` prepared for the next runs with setting ``key``."""
        if key is None:
            return
        shared = self.by_key.get(key)
        if shared is not None:
            shared.runs += 1
            return
        self.by_key[key] = Prepared(trainer.train_dataset, trainer.eval_dataset)

    @staticmethod
    def reuse(spec: RunSpec, args: Any) -> tuple[RunSpec, Any]:
        """The spec and args to build a trainer on already prepared datasets: TRL skips its
        preparation; the formatting function has been applied already."""
        kwargs = {**(getattr(args, "dataset_kwargs", None) or {}), "skip_prepare_dataset": True}
        return (
            dataclasses.replace(spec, formatting_func=None),
            dataclasses.replace(args, dataset_kwargs=kwargs),
        )
