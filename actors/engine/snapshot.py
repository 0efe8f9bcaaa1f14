"""A run's live training state, captured from its trainer and put back: the engine's side of a
checkpoint (``actors.storage.checkpoint`` writes and reads the files).

``capture`` copies the run's adapter weights, optimizer state, LR schedule and RNG into host
memory (tensors copied, also when they are on the CPU already), so the snapshot never aliases
live weights and can be written in the background while the run trains on
(``actors.engine.ckpt_writer``). ``restore_into`` puts such a state (captured, or loaded from
disk) back into a registered run: for an executor that restarted, a run re-placed elsewhere, or a
warm-started clone.
"""

from __future__ import annotations

from typing import Any

import torch

from actors.engine.algorithms import torch_internals, trl_internals
from actors.storage.checkpoint import NESTED


def capture(record: Any, model: Any) -> dict[str, Any]:
    """Collect a run's complete training state from the executor: a snapshot in host memory
    (tensors copied to the CPU, also when they are there already), so it can be written in the
    background while the run trains on (``actors.engine.ckpt_writer``)."""
    from peft import get_peft_model_state_dict

    name = record.spec.adapter_name
    adapter = {
        k: v.detach().to("cpu", copy=True).contiguous()
        for k, v in get_peft_model_state_dict(model, adapter_name=name).items()
    }
    trainer = record.trainer
    opt_state = trainer.optimizer.state_dict()
    opt_tensors: dict[str, torch.Tensor] = {}
    opt_scalars: dict[str, dict[str, Any]] = {}
    for idx, per_param in opt_state["state"].items():
        scalars = _split_tensors(per_param, f"{idx}.", opt_tensors)
        if scalars:
            opt_scalars[str(idx)] = scalars
    rng = {"cpu": record.rng_state.clone()}
    if record.cuda_rng_state is not None:
        rng["cuda"] = record.cuda_rng_state.clone()
    meta = {
        "run_id": record.spec.run_id,
        "steps_done": record.steps_done,
        "optimizer_param_groups": _jsonable(opt_state["param_groups"]),
        "optimizer_scalars": opt_scalars,
        "scheduler": _jsonable(trainer.lr_scheduler.state_dict()),
        "total_train_tokens": trl_internals.total_train_tokens(trainer),
    }
    return {"adapter": adapter, "optimizer": opt_tensors, "rng": rng, "meta": meta}


def restore_into(record: Any, model: Any, state: dict[str, Any]) -> None:
    """Put a captured state back into a registered run (adapter, optimizer, schedule, RNG)."""
    from peft import set_peft_model_state_dict

    name = record.spec.adapter_name
    device = next(p.device for p in model.parameters())
    set_peft_model_state_dict(
        model, {k: v.to(device) for k, v in state["adapter"].items()}, adapter_name=name
    )
    meta = state["meta"]
    trainer = record.trainer
    per_param: dict[int, dict[str, Any]] = {}
    for idx, scalars in meta["optimizer_scalars"].items():
        per_param[int(idx)] = scalars
    for key, tensor in state["optimizer"].items():
        idx, path = key.split(".", 1)
        *outer, field = path.split(NESTED)
        target = per_param.setdefault(int(idx), {})
        for name in outer:
            target = target.setdefault(name, {})
        target[field] = tensor.to(device)
    trainer.optimizer.load_state_dict(
        {"state": per_param, "param_groups": meta["optimizer_param_groups"]}
    )
    trainer.lr_scheduler.load_state_dict(meta["scheduler"])
    _apply_config_learning_rate(trainer, float(record.spec.trl_args.learning_rate))
    record.rng_state = state["rng"]["cpu"].clone()
    if "cuda" in state["rng"] and record.cuda_rng_state is not None:
        record.cuda_rng_state = state["rng"]["cuda"].clone()
    record.steps_done = int(meta["steps_done"])
    trainer.state.global_step = record.steps_done
    trl_internals.set_total_train_tokens(trainer, meta["total_train_tokens"])


def _apply_config_learning_rate(trainer: Any, learning_rate: float) -> None:
    """A warm-started clone may change learning_rate: keep the parent's schedule position but
    scale it to the clone's peak rate (the schedule's multiplier is base_lr-independent)."""
    scheduler = trainer.lr_scheduler
    for i, group in enumerate(trainer.optimizer.param_groups):
        old_base = scheduler.base_lrs[i]
        if old_base == learning_rate:
            continue
        factor = group["lr"] / old_base if old_base else 0.0
        scheduler.base_lrs[i] = learning_rate
        group["initial_lr"] = learning_rate
        group["lr"] = learning_rate * factor
    torch_internals.set_last_lrs(scheduler, [g["lr"] for g in trainer.optimizer.param_groups])


def _split_tensors(values: dict[str, Any], prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Move the tensors of ``values`` (nested dicts too) into ``tensors`` under ``prefix`` +
    their key path, copied to the host; return what is left (JSON), ``{}`` for nothing."""
    rest: dict[str, Any] = {}
    for key, value in values.items():
        if torch.is_tensor(value):
            tensors[f"{prefix}{key}"] = value.detach().to("cpu", copy=True).contiguous()
        elif isinstance(value, dict):
            inner = _split_tensors(value, f"{prefix}{key}{NESTED}", tensors)
            if inner or not value:
                rest[key] = inner
        else:
            rest[key] = value
    return rest


def _jsonable(value: Any) -> Any:
    """Optimizer/scheduler state as JSON: tuples become lists, tensors numbers."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if torch.is_tensor(value):
        return value.item() if value.numel() == 1 else value.tolist()
    if callable(value):
        return None
    return value
