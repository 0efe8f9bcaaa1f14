"""Turning what users pass as datasets into ``datasets.Dataset`` and checking its columns."""

from __future__ import annotations

from typing import Any

from policies.errors import ConfigError
from rf_ray.config import RunConfig

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
    """The dataset must have the columns the run's trainer reads (unless a formatting_func
    builds the text itself)."""
    if run.trainer_type == "SFT" and run.formatting_func is not None:
        return
    formats = _FORMATS[run.trainer_type]
    columns = set(ds.column_names)
    if any(set(fmt) <= columns for fmt in formats):
        return
    wanted = " or ".join("+".join(fmt) for fmt in formats)
    raise ConfigError(
        f"{field} has columns {sorted(columns)}, but {run.trainer_type} needs {wanted}"
        + (" (or pass formatting_func in RFModelConfig)" if run.trainer_type == "SFT" else "")
    )
