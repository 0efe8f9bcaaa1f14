"""Turning what users pass as datasets into ``datasets.Dataset``, checking its columns, and
fingerprinting the rows a trainer will see."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from policies.errors import ConfigError
from rf_ray.specs import RunConfig

# Column sets each TRL trainer accepts (TRL's dataset formats), in the order we name them.
_FORMATS: dict[str, list[tuple[str, ...]]] = {
    "SFT": [("text",), ("prompt", "completion"), ("messages",)],
    "DPO": [("prompt", "chosen", "rejected"), ("chosen", "rejected")],
    "GRPO": [("prompt",)],
}


def to_dataset(data: Any, field: str) -> Any:
    """A ``datasets.Dataset`` from a Dataset, a list of dicts, a dict of lists or a DataFrame."""
    import datasets

    if isinstance(data, datasets.DatasetDict):
        raise ConfigError(
            f"{field} is a DatasetDict with splits {list(data)}; pass one split, e.g. "
            f"{field}=ds['train']"
        )
    if isinstance(data, datasets.Dataset):
        ds = data
    elif isinstance(data, list):
        if data and not all(isinstance(r, dict) for r in data):
            raise ConfigError(f"{field} must be a list of dicts (one per example)")
        ds = datasets.Dataset.from_list(data)
    elif isinstance(data, dict):
        ds = datasets.Dataset.from_dict(data)
    elif type(data).__name__ == "DataFrame":
        ds = datasets.Dataset.from_pandas(data, preserve_index=False)
    else:
        raise ConfigError(
            f"{field} must be a datasets.Dataset, a list of dicts, a dict of lists or a pandas "
            f"DataFrame, got {type(data).__name__}"
        )
    if len(ds) == 0:
        raise ConfigError(f"{field} is empty; it needs at least one example")
    return ds


def check_columns(ds: Any, run: RunConfig, field: str) -> None:
    """The dataset must have the columns the run's trainer reads. An SFT ``formatting_func``
    builds the text itself; a DPO or GRPO one (RapidFire's shape) adds the columns it returns to
    each row, so those count, read from its result on the first row."""
    if run.trainer_type == "SFT" and run.formatting_func is not None:
        return
    formats = _FORMATS[run.trainer_type]
    columns = set(ds.column_names)
    how = ""
    if run.formatting_func is not None:
        columns |= set(_formatted(ds, run, field))
        how = f" after formatting_func {_name(run.formatting_func)}"
    if any(set(fmt) <= columns for fmt in formats):
        return
    wanted = " or ".join("+".join(fmt) for fmt in formats)
    raise ConfigError(
        f"{field} has columns {sorted(columns)}{how}, but {run.trainer_type} needs {wanted}"
        + (" (or pass formatting_func in RFModelConfig)" if not how else "")
    )


def _formatted(ds: Any, run: RunConfig, field: str) -> dict[str, Any]:
    """What the run's formatting_func returns for the first row: it must be a dict of columns."""
    name = _name(run.formatting_func)
    try:
        out = run.formatting_func(ds[0])  # type: ignore[misc]
    except Exception as e:
        raise ConfigError(f"formatting_func {name} failed on {field}[0]: {e!r}") from e
    if not isinstance(out, dict):
        raise ConfigError(
            f"formatting_func {name} returned {type(out).__name__} for {field}[0]; for "
            f"{run.trainer_type} it must return a dict of columns (RapidFire's shape, e.g. "
            "{'prompt': [...messages]}), which rf-ray adds to each row"
        )
    return out


def _name(func: Any) -> str:
    return str(getattr(func, "__qualname__", repr(func)))


FINGERPRINT_BATCH_ROWS = 1024
"""Rows hashed at a time: bounds the fingerprint's extra memory to one batch of rows."""


def dataset_fingerprint(train: Any, evals: Any) -> str:
    """A content hash of the rows as the trainer sees them, stable across processes.

    A ``datasets.Dataset`` made by ``shuffle``, ``select`` or ``filter`` shares its parent's
    Arrow table and keeps an indices mapping beside it; hashing the table alone would call a
    shuffled or filtered copy "the same data". So the rows are read through the mapping, in
    order, ``FINGERPRINT_BATCH_ROWS`` at a time (``with_format("arrow").iter``, which applies
    the mapping per batch): memory stays one batch, never a flattened copy of the dataset.
    Each batch is hashed as an Arrow IPC stream of one freshly laid-out record batch, so equal
    rows give equal bytes however the source table happens to be chunked or sliced.
    """
    h = hashlib.sha256()
    for ds in (train, evals):
        if ds is None:
            h.update(b"none")
            continue
        features = json.dumps(ds.features.to_dict(), sort_keys=True, default=str)
        h.update(f"rows={len(ds)};features={features};".encode())
        for batch in ds.with_format("arrow").iter(batch_size=FINGERPRINT_BATCH_ROWS):
            h.update(_ipc_bytes(batch))
    return h.hexdigest()[:16]


def _ipc_bytes(table: Any) -> bytes:
    """``table`` as one freshly laid-out record batch in an Arrow IPC stream. ``take`` copies
    the rows into new zero-offset buffers: a slice of a larger table would otherwise carry its
    parent's offsets into the bytes."""
    import pyarrow as pa

    # Schema metadata is left out: datasets puts its own cache fingerprint there.
    table = table.replace_schema_metadata(None)
    batch = table.take(pa.array(range(table.num_rows), pa.int64())).combine_chunks().to_batches()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        for b in batch:
            writer.write_batch(b)
    return bytes(sink.getvalue().to_pybytes())
