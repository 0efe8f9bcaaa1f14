"""Durable run checkpoints: tensors in safetensors, everything else in JSON. Never pickle.

A checkpoint is a directory ``<run dir>/checkpoints/step-<N>/`` holding

* ``adapter.safetensors``: the run's LoRA weights (PEFT state-dict names, no adapter name);
* ``optimizer.safetensors`` + ``state.json``: optimizer tensors, and the rest of the optimizer,
  LR-scheduler, RNG and progress state as plain JSON.

It is written into a temporary sibling directory, every file and the directory fsynced, then moved
into place (``durable.replace_dir``: an existing ``step-N`` is swapped out atomically) and
``checkpoints/`` fsynced, so a reader, even after an OS crash, sees either the previous checkpoint
or the complete new one, never a torn one. Files are 0600, directories 0700. Loading
uses ``safetensors.torch.load_file`` and ``json.load`` only, so a checkpoint cannot run code.
"""

from __future__ import annotations

import json
import shutil
import struct
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from actors.storage import durable
from actors.storage.layout import ExperimentDir, RunDir, checkpoint_step
from policies.errors import InfrastructureError

if TYPE_CHECKING:
    import torch

# torch and safetensors.torch are imported where tensors are handled: the driver reads which
# checkpoint to resume from (``newest_intact``) without them.

STATE_FILE = "state.json"
ADAPTER_FILE = "adapter.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
EXPORTED_WEIGHTS = "adapter_model.safetensors"
EXPORTED_CONFIG = "adapter_config.json"
"""An exported adapter's files, PEFT's ``save_pretrained`` layout (``export_adapter``)."""


def save(state: dict[str, Any], run_dir: str | Path, keep: int = 1) -> Path:
    """Write ``state`` durably as ``run_dir/checkpoints/step-<N>``; keep the newest ``keep``.

    When this returns, the checkpoint survives an OS crash (see the module docstring)."""
    run = RunDir(run_dir)
    from safetensors.torch import save_file

    root = durable.make_private_dir(run.checkpoints_dir)
    final = run.checkpoint(state["meta"]["steps_done"])
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))  # mode 0700
    try:
        save_file(state["adapter"], str(tmp / ADAPTER_FILE))
        durable.fsync_file(tmp / ADAPTER_FILE)
        tensors = dict(state["optimizer"])
        tensors.update({f"rng.{k}": v for k, v in state["rng"].items()})
        save_file(tensors, str(tmp / OPTIMIZER_FILE))
        durable.fsync_file(tmp / OPTIMIZER_FILE)
        durable.atomic_write(tmp / STATE_FILE, json.dumps(state["meta"]).encode())
        durable.fsync_dir(tmp)
        durable.replace_dir(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    older = sorted(p for p in root.iterdir() if p != final and checkpoint_step(p) is not None)
    for old in older[: max(len(older) - (keep - 1), 0)]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def copy(source: str | Path, run_dir: str | Path) -> Path:
    """Durably copy checkpoint ``source`` into ``run_dir/checkpoints/`` under the same
    ``step-N`` name (a warm-started clone's starting point); returns the copy."""
    return durable.copy_dir(source, RunDir(run_dir).checkpoints_dir)


def remove_partial_writes(experiment_dir: str | Path) -> list[Path]:
    """Clean up after ``save`` calls a crash interrupted, in every run's ``checkpoints/``:
    delete temporary directories, and finish interrupted replacements (an aside copy is put
    back if its ``step-N`` is missing, else deleted). Returns what was removed or restored.
    Call before any executor starts."""
    layout = ExperimentDir(experiment_dir)
    roots = [layout.run(i).checkpoints_dir for i in layout.run_ids_on_disk()]
    roots = [root for root in roots if root.is_dir()]
    leftovers = sorted(p for root in roots for p in root.glob(".tmp-*"))
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True)
    for root in roots:
        leftovers += durable.recover_asides(root)
    return leftovers


class DamagedCheckpointError(InfrastructureError):
    """A checkpoint file cannot be read (truncated, garbage): names the file. The run resumes
    from the newest checkpoint that reads (``newest_intact``)."""


def _damaged(file: Path, problem: str) -> DamagedCheckpointError:
    return DamagedCheckpointError(
        f"checkpoint file {file} is damaged ({problem}); `resume` continues the run from its "
        "newest checkpoint that reads"
    )


def _state(path: Path) -> dict[str, Any]:
    """A checkpoint's ``state.json``, checked."""
    file = path / STATE_FILE
    try:
        meta = json.loads(file.read_text())
        int(meta["steps_done"])
    except FileNotFoundError:
        raise _damaged(file, "missing") from None
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise _damaged(file, f"{type(e).__name__}: {e}") from None
    return dict(meta)


def steps_done(path: str | Path) -> int:
    """The optimizer step a checkpoint was taken at (reads its JSON only)."""
    return int(_state(durable.resolve(path))["steps_done"])


def _tensors(file: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    check_safetensors(file)
    try:
        return dict(load_file(str(file)))
    except Exception as e:  # safetensors raises its own error type, naming no path
        raise _damaged(file, f"{type(e).__name__}: {e}") from e


def load(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by ``save`` (no code execution: safetensors + JSON). A
    checkpoint whose replacement a crash interrupted is read from its aside copy. A damaged
    file raises ``DamagedCheckpointError`` naming it."""
    path = durable.resolve(path)
    meta = _state(path)
    tensors = _tensors(path / OPTIMIZER_FILE)
    rng = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("rng.")}
    optimizer = {k: v for k, v in tensors.items() if not k.startswith("rng.")}
    return {
        "adapter": _tensors(path / ADAPTER_FILE),
        "optimizer": optimizer,
        "rng": rng,
        "meta": meta,
    }


def check_safetensors(file: Path) -> None:
    """Raise ``DamagedCheckpointError`` unless ``file`` is a whole safetensors file: an 8-byte
    header length, a JSON header, and data whose size is exactly what the header's offsets
    say (a truncated file is short). Reads the header only; no torch."""
    try:
        size = file.stat().st_size
        with open(file, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > size - 8:
                raise ValueError(f"header of {length} bytes in a file of {size}")
            header = json.loads(f.read(length))
        ends = [int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"]
    except FileNotFoundError:
        raise _damaged(file, "missing") from None
    except (struct.error, UnicodeDecodeError, ValueError, KeyError, TypeError, IndexError) as e:
        raise _damaged(file, f"{type(e).__name__}: {e}") from None
    if 8 + length + max(ends, default=0) != size:
        raise _damaged(
            file, f"{size} bytes, its header describes {8 + length + max(ends, default=0)}"
        )


def verify(path: str | Path) -> None:
    """Raise ``DamagedCheckpointError`` naming the first file of the checkpoint that does not
    read whole (its JSON, and each safetensors file's header against its size)."""
    path = durable.resolve(path)
    _state(path)
    for name in (ADAPTER_FILE, OPTIMIZER_FILE):
        check_safetensors(path / name)


def newest_intact(run_dir: str | Path, at_most: int) -> tuple[Path | None, list[str]]:
    """The newest checkpoint of the run at step ``at_most`` or before whose files all read
    whole (``verify``), and why each newer one was passed over (the damaged file named); None
    when none reads."""
    run = RunDir(run_dir)
    steps = set()
    if run.checkpoints_dir.is_dir():  # a checkpoint's aside copy (durable.resolve) counts too
        names = (p.name.removeprefix(durable.ASIDE_PREFIX) for p in run.checkpoints_dir.iterdir())
        steps = {step for name in names if (step := checkpoint_step(name)) is not None}
    found = [run.checkpoint(step) for step in sorted(steps, reverse=True) if step <= at_most]
    skipped = []
    for candidate in found:
        try:
            verify(candidate)
        except DamagedCheckpointError as e:
            skipped.append(str(e))
            continue
        return candidate, skipped
    return None, skipped


def export_adapter(model: Any, adapter_name: str, path: str | Path) -> Path:
    """Write one adapter in PEFT's ``save_pretrained`` layout, loadable as the default adapter
    by ``PeftModel.from_pretrained(base, path)``."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    path = durable.make_private_dir(path)
    weights = {
        k: v.detach().to("cpu").contiguous()
        for k, v in get_peft_model_state_dict(model, adapter_name=adapter_name).items()
    }
    save_file(weights, str(path / EXPORTED_WEIGHTS), metadata={"format": "pt"})
    model.peft_config[adapter_name].save_pretrained(str(path))
    durable.make_private_tree(path)  # PEFT writes with the process's umask
    return path


def is_exported_adapter(path: str | Path) -> bool:
    """Whether ``path`` holds an adapter in PEFT's layout, whole: ``export_adapter`` writes its
    config last, and ``PeftModel.from_pretrained`` needs it."""
    return (Path(path) / EXPORTED_CONFIG).is_file()


NESTED = "/"
"""Joins the keys of an optimizer state nested in a dict (bitsandbytes keeps its 8-bit state
under ``__bnb_optimizer_quant_state__``) into one safetensors name: ``<param>.<key>/<key>``."""
