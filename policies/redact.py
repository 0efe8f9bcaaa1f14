"""Which knob values may be secrets, and masking them: the one rule for everything rf-ray writes
or prints (MLflow params, ``rf-ray status``, the dashboard, the live view, error messages).

A knob is secret when the last dotted part of its name (``wandb.api_key`` -> ``api_key``), cut
into words at ``_``, ``-`` and ``.``:

- has a word containing ``secret``, ``password``, ``passwd`` or ``credential``; or
- ends in ``token``, ``key`` or ``apikey`` (``hub_token``, ``api_key``, ``access_token``),
  except a tokenizer's special tokens (``pad_token``, ``eos_token``, ...: the
  text of a token, which users need to see) and names where ``token`` or ``key`` is not the last
  word (``pad_token_id``, ``trainable_token_indices``, ``max_new_tokens``, ``keyboard``).

A section name is not the knob's (``tokenizer_kwargs.padding_side`` is not a secret). The rule
is pure string work so that every layer can use it (``policies`` imports nothing).
"""

from __future__ import annotations

import re
from typing import Any

REDACTED = "***"
"""What a secret value is shown as."""

_ANYWHERE = ("secret", "password", "passwd", "credential")
_LAST_WORD = ("token", "key", "apikey")
_SPECIAL_TOKENS = ("pad", "eos", "bos", "unk", "sep", "cls", "mask")
"""``<word>_token``: a tokenizer's special token (its text), not a credential."""


def is_secret_key(key: str) -> bool:
    """True for a knob whose value may be a secret (see the module docstring)."""
    words = [w for w in re.split(r"[^a-z0-9]+", key.rsplit(".", 1)[-1].lower()) if w]
    if not words:
        return False
    if any(part in w for w in words for part in _ANYWHERE):
        return True
    if words[-1] not in _LAST_WORD:
        return False
    return not (len(words) == 2 and words[0] in _SPECIAL_TOKENS and words[1] == "token")


def shown(key: str, value: Any) -> str:
    """``repr(value)`` for a message that names knob ``key`` (``f"{key}={shown(key, v)}"``),
    or ``'***'`` when ``key`` looks like a secret (an empty or None value is shown as it is)."""
    if is_secret_key(key) and value not in (None, ""):
        return repr(REDACTED)
    return repr(value)


def redact(params: dict[str, Any]) -> dict[str, Any]:
    """``params`` with every secret-looking knob's value replaced by ``REDACTED`` (an empty or
    None value stays: it hides nothing and says that none was set)."""
    return {
        k: REDACTED if is_secret_key(k) and v not in (None, "") else v for k, v in params.items()
    }


__all__ = ["REDACTED", "is_secret_key", "redact", "shown"]
