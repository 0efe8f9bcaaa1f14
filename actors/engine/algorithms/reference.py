"""DPO's and GRPO's reference policy: the shared base with adapters disabled, no second copy."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def base_as_reference(model: Any, adapter_name: str) -> Iterator[None]:
    """Build a DPO or GRPO trainer inside this block: its reference policy is the shared base
    with adapters disabled, and ``adapter_name`` is the active adapter afterwards.

    Given a PeftModel (GRPO: with beta > 0), TRL's DPOTrainer and GRPOTrainer assume its
    "default" adapter may be pretrained and add a frozen "ref" copy of it. rf-ray's adapters are
    fresh, so the reference is the base with adapters disabled (what TRL does when it wraps the
    model itself): satisfy the lookup, then drop the copy, and TRL falls back to
    ``use_adapter(model, None)`` (adapters disabled).
    """
    model.peft_config["default"] = model.peft_config[adapter_name]
    try:
        yield
    finally:
        del model.peft_config["default"]
    if "ref" in model.peft_config:
        model.delete_adapter("ref")
    model.set_adapter(adapter_name)
