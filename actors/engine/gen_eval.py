"""Generation metrics at a chunk's end: each run completes eval prompts with its own adapter and
the user's ``eval_metrics_fn`` scores the decoded text against the references.

Prompts and references come from the eval set's first ``num_prompts`` rows (the same rows at
every chunk, so chunks compare), read from whichever columns the row has:

* ``prompt`` + ``completion`` (TRL's prompt-completion format, plain text or chat messages);
* ``messages``: the turns before the last assistant turn are the prompt, that turn the reference;
* ``prompt`` + ``chosen`` (DPO's preference format): the chosen answer is the reference;
* ``input`` + ``output`` or ``instruction`` + ``response`` (two shapes RapidFire AI's generation
  callback also reads);
* or the user's ``prompts_fn(row) -> (prompt, reference)``.

``generation_config`` may carry RapidFire's own prompt settings, which are not ``generate``
keywords: ``max_input_length`` (prompt tokens kept), ``truncation_side`` (``"left"``, the
default, keeps a long prompt's end) and ``add_generation_prompt`` (default True); ``use_cache``
is dropped, as RapidFire drops it.

A chat prompt (a list of ``{"role", "content"}`` messages) goes through the tokenizer's chat
template with the generation prompt, as the trainer formats it; a text prompt is tokenized as is.
All runs evaluated together generate in one batch (``actors.engine.generation.generate_multi``); a
run whose generation or metric function fails gets its own ``RunFailedError`` and the others go on.
The last chunk's prompts, references and generations are kept per run in
``<run dir>/samples.json`` (atomically replaced; bounded by ``num_prompts`` and
``MAX_SAMPLE_CHARS``) for ``rf-ray samples``.

This module imports torch only inside functions: ``rf_ray.configs`` builds ``GenerationEval``
objects on the driver, which must stay light.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from actors.storage.layout import RunDir
from policies.errors import ConfigError, DamagedFileError, RunFailedError

logger = logging.getLogger(__name__)

DEFAULT_GENERATION = {"max_new_tokens": 64, "do_sample": False}
"""Generation settings when the run's ``generation_config`` is None."""
PROMPT_SETTINGS = ("max_input_length", "truncation_side", "add_generation_prompt", "use_cache")
"""RapidFire AI's ``generation_config`` keys that shape the prompts, not ``generate``."""
MAX_SAMPLE_CHARS = 2000
"""Each prompt, reference and generation is cut to this many characters in samples.json."""


@dataclass(frozen=True)
class GenerationEval:
    """How a run is scored on what it generates (``RFModelConfig(eval_metrics_fn=...)``)."""

    metrics_fn: Callable[..., Mapping[str, float]]
    """``f(predictions, references, prompts) -> {name: value}``; each name becomes a chunk
    metric (so ``SuccessiveHalving(metric=name)`` can prune on it)."""
    num_prompts: int | None = 32
    """How many eval rows are generated for (``eval_generations``): bounds the cost. ``None``:
    every eval row (RapidFire's ``compute_metrics`` with a ``generation_config``)."""
    prompts_fn: Callable[[Mapping[str, Any]], tuple[Any, str]] | None = None
    """``row -> (prompt, reference)`` for eval sets whose columns rf-ray does not know."""

    def __post_init__(self) -> None:
        if not callable(self.metrics_fn):
            raise ConfigError(
                f"eval_metrics_fn={self.metrics_fn!r} is not callable; pass a metric name such "
                "as 'rougeL', a list of names, or f(predictions, references, prompts) -> dict"
            )
        n = self.num_prompts
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ConfigError(
                f"eval_generations={n!r} must be an int >= 1 (how many eval prompts each run "
                "completes at every chunk end) or None (every eval row)"
            )
        if self.prompts_fn is not None and not callable(self.prompts_fn):
            raise ConfigError(
                f"eval_prompts_fn={self.prompts_fn!r} is not callable; pass "
                "f(row) -> (prompt, reference) or None"
            )

    @property
    def name(self) -> str:
        return str(getattr(self.metrics_fn, "__qualname__", type(self.metrics_fn).__qualname__))


# ---------------------------------------------------------------------------- prompts
def _last_assistant(messages: Sequence[Mapping[str, Any]]) -> int:
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].get("role") == "assistant":
            return i
    raise ValueError("the messages have no assistant turn to take as the reference")


def _text(value: Any) -> str:
    """A completion as text: a string, or the content of its last assistant message."""
    if isinstance(value, str):
        return value
    if isinstance(value, Sequence) and value and isinstance(value[0], Mapping):
        return str(value[_last_assistant(value)].get("content", ""))
    raise ValueError(f"cannot read a reference text from {value!r}")


def prompt_and_reference(
    row: Mapping[str, Any], prompts_fn: Callable[..., Any] | None = None
) -> tuple[Any, str]:
    """The prompt (text or chat messages) and reference text of one eval row."""
    if prompts_fn is not None:
        prompt, reference = prompts_fn(row)
        return prompt, str(reference)
    if "prompt" in row and "completion" in row:
        return row["prompt"], _text(row["completion"])
    if "messages" in row:
        messages = row["messages"]
        last = _last_assistant(messages)
        return list(messages[:last]), str(messages[last].get("content", ""))
    if "prompt" in row and "chosen" in row:
        return row["prompt"], _text(row["chosen"])
    for prompt, reference in (("input", "output"), ("instruction", "response")):
        if prompt in row and reference in row:
            return row[prompt], _text(row[reference])
    raise ValueError(
        f"the eval row has columns {sorted(row)}; generation metrics read prompt+completion, "
        "messages, prompt+chosen, input+output or instruction+response: rename the columns "
        "or pass eval_prompts_fn=f(row) -> (prompt, reference)"
    )


def _rows(
    eval_dataset: Any, n: int | None, formatting_func: Callable[..., Any] | None
) -> list[Any]:
    n = len(eval_dataset) if n is None else min(n, len(eval_dataset))
    rows = [eval_dataset[i] for i in range(n)]
    if formatting_func is not None and rows and isinstance(formatting_func(rows[0]), Mapping):
        # RapidFire maps the eval set with it (``dataset.map``): the columns it returns are added
        # to the row's own, which stay (a ``text`` column beside ``instruction``/``response``).
        rows = [{**row, **formatting_func(row)} for row in rows]
    return rows


def eval_pairs(
    gen: GenerationEval, eval_dataset: Any, formatting_func: Callable[..., Any] | None = None
) -> list[tuple[Any, str]]:
    """(prompt, reference) of the first ``gen.num_prompts`` eval rows."""
    return [
        prompt_and_reference(r, gen.prompts_fn)
        for r in _rows(eval_dataset, gen.num_prompts, formatting_func)
    ]


def check_eval_set(
    gen: GenerationEval, eval_dataset: Any, where: str, formatting_func: Any = None
) -> None:
    """Refuse, before anything starts, an eval set generation metrics cannot read."""
    if eval_dataset is None or len(eval_dataset) == 0:
        raise ConfigError(
            f"{where}: eval_metrics_fn={gen.name!r} scores generations for eval prompts, but "
            f"eval_dataset={eval_dataset!r} has no rows; pass an eval_dataset to run_fit"
        )
    try:
        prompt, _ = eval_pairs(
            GenerationEval(gen.metrics_fn, 1, gen.prompts_fn), eval_dataset, formatting_func
        )[0]
    except Exception as e:
        how = (
            f"eval_prompts_fn={gen.prompts_fn!r} failed on row 0"
            if gen.prompts_fn
            else "eval_dataset"
        )
        raise ConfigError(f"{where}: {how}: {e}") from e
    if not isinstance(prompt, str) and not (
        isinstance(prompt, list) and all(isinstance(m, Mapping) for m in prompt)
    ):
        raise ConfigError(
            f"{where}: an eval prompt must be text or a list of chat messages, got {prompt!r}"
        )


# ---------------------------------------------------------------------------- one pass
@dataclass
class GenTask:
    """One run to evaluate by generation at this chunk end."""

    run_id: int
    adapter: str
    gen: GenerationEval
    generation_config: dict[str, Any] | None
    seed: int
    """Seeds the run's sampling stream (the run's seed mixed with its step: repeatable)."""
    out_dir: str | None
    """The run's directory: samples.json goes there (``None``: not kept)."""
    formatting_func: Callable[..., Any] | None = None
    step: int = 0


def encode_prompts(
    tokenizer: Any, prompts: list[Any], settings: Mapping[str, Any] | None = None
) -> tuple[Any, Any]:
    """Left-padded ``input_ids`` and ``attention_mask`` for the prompts (the tokenizer's own
    padding side is left alone: the trainers share it). ``settings``: the run's
    ``PROMPT_SETTINGS`` (see the module docstring)."""
    import torch

    settings = settings or {}
    rows = []
    for p in prompts:
        if isinstance(p, str):
            rows.append(tokenizer(p)["input_ids"])
        else:
            text = tokenizer.apply_chat_template(
                p, add_generation_prompt=settings.get("add_generation_prompt", True), tokenize=False
            )
            rows.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    keep = settings.get("max_input_length")
    if keep:
        left = settings.get("truncation_side", "left") == "left"
        rows = [list(r[-keep:]) if left else list(r[:keep]) for r in rows]
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.tensor([[pad] * (width - len(r)) + list(r) for r in rows], dtype=torch.long)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.long)
    return ids, mask


def _request(task: GenTask, tokenizer: Any, pairs: list[tuple[Any, str]], device: Any) -> Any:
    import torch
    import transformers

    from actors.engine.generation import NEUTRAL_SAMPLING, GenRequest

    # rf-ray's default decodes greedily, whatever the model's own generation config says.
    settings = dict(task.generation_config or {**DEFAULT_GENERATION, **NEUTRAL_SAMPLING})
    prompt_settings = {k: settings.pop(k) for k in PROMPT_SETTINGS if k in settings}
    settings.setdefault("max_new_tokens", DEFAULT_GENERATION["max_new_tokens"])
    settings.setdefault("eos_token_id", tokenizer.eos_token_id)
    settings.setdefault("pad_token_id", tokenizer.pad_token_id)
    config = transformers.GenerationConfig(**settings)
    ids, mask = encode_prompts(tokenizer, [p for p, _ in pairs], prompt_settings)
    generator = None
    if config.do_sample:
        generator = torch.Generator(device=device).manual_seed(task.seed * 1_000_003 + task.step)
    return GenRequest(task.adapter, ids, mask, config, generator)


def run_tasks(
    model: Any, tokenizer: Any, tasks: list[GenTask], eval_dataset: Any
) -> dict[int, dict[str, float] | BaseException]:
    """Generate for every task in one batch, score each with its metric function, keep its
    samples. Per run: its metrics, or the exception that fails it (never raises for one run)."""
    from actors.engine.generation import generate_multi

    device = next(model.parameters()).device
    out: dict[int, dict[str, float] | BaseException] = {}
    ready = []
    for task in tasks:
        try:
            pairs = eval_pairs(task.gen, eval_dataset, task.formatting_func)
            ready.append((task, pairs, _request(task, tokenizer, pairs, device)))
        except Exception as e:
            out[task.run_id] = RunFailedError(
                f"run {task.run_id}: reading its eval prompts for generation failed: {e!r}"
            )
    if not ready:
        return out
    start = time.perf_counter()
    try:
        generated = generate_multi(model, [r for _, _, r in ready])
    except Exception as e:  # one run's settings may break the batch: retry each run alone
        logger.warning(
            "batched generation of runs %s failed (%r); each run alone",
            [t.run_id for t, _, _ in ready],
            e,
        )
        generated = []
        for _task, _, request in ready:
            try:
                generated.append(generate_multi(model, [request])[0])
            except Exception as alone:
                generated.append(alone)
    seconds = time.perf_counter() - start
    for (task, pairs, request), ids in zip(ready, generated):
        if isinstance(ids, BaseException):
            out[task.run_id] = RunFailedError(f"run {task.run_id}: generation failed: {ids!r}")
            continue
        width = request.input_ids.shape[1]
        predictions = [
            tokenizer.decode(row[width:], skip_special_tokens=True).strip() for row in ids
        ]
        out[task.run_id] = _score(task, pairs, predictions)
        if isinstance(out[task.run_id], dict):
            out[task.run_id]["gen_seconds"] = seconds  # type: ignore[index]
            _keep_samples(task, pairs, predictions, out[task.run_id])  # type: ignore[arg-type]
    return out


def _prompt_text(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m.get('role')}: {m.get('content')}" for m in prompt)


def _score(
    task: GenTask, pairs: list[tuple[Any, str]], predictions: list[str]
) -> dict[str, float] | BaseException:
    """The metric function's result as floats; a raise or a bad result fails the run, naming
    the function."""
    name = task.gen.name
    try:
        result = task.gen.metrics_fn(
            predictions, [r.strip() for _, r in pairs], [_prompt_text(p) for p, _ in pairs]
        )
    except Exception as e:
        return RunFailedError(f"run {task.run_id}: eval_metrics_fn {name} raised {e!r}")
    if not isinstance(result, Mapping):
        return RunFailedError(
            f"run {task.run_id}: eval_metrics_fn {name} returned {result!r}; it must return a "
            "dict of metric name -> number"
        )
    metrics = {}
    for key, value in result.items():
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not isinstance(key, str)
        ):
            return RunFailedError(
                f"run {task.run_id}: eval_metrics_fn {name} returned {key!r}: {value!r}; "
                "metric names must be str and values numbers"
            )
        metrics[key] = float(value)
    return metrics


def _cut(text: str) -> str:
    return text if len(text) <= MAX_SAMPLE_CHARS else text[:MAX_SAMPLE_CHARS] + " [...]"


def _keep_samples(
    task: GenTask, pairs: list[tuple[Any, str]], predictions: list[str], metrics: dict[str, float]
) -> None:
    """Replace the run's samples.json with this chunk's (a failure to write is logged, not
    fatal: the metrics stand)."""
    if task.out_dir is None:
        return
    from actors.storage.durable import atomic_write, make_private_dir

    record = {
        "run_id": task.run_id,
        "step": task.step,
        "metrics": {k: v for k, v in metrics.items() if math.isfinite(v)},
        "metric_names": sorted(k for k in metrics if k != "gen_seconds"),
        "samples": [
            {"prompt": _cut(_prompt_text(p)), "reference": _cut(r.strip()), "generation": _cut(g)}
            for (p, r), g in zip(pairs, predictions)
        ],
    }
    try:
        make_private_dir(task.out_dir)
        atomic_write(RunDir(task.out_dir).samples_file, json.dumps(record, indent=1).encode())
    except OSError as e:
        logger.warning("run %s: could not keep its samples in %s: %r", task.run_id, task.out_dir, e)


def read_samples(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's last kept samples (``None`` if it has none yet); a file that is not what
    ``_keep_samples`` writes is a ``DamagedFileError`` naming it."""
    path = RunDir(run_dir).samples_file
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, ValueError) as e:
        raise DamagedFileError(path, f"is not JSON ({e}){_SAMPLES_AGAIN}") from None
    problem = _samples_problem(data)
    if problem is not None:
        raise DamagedFileError(path, f"{problem}{_SAMPLES_AGAIN}")
    return dict(data)


_SAMPLES_AGAIN = "; the run's next chunk end writes it again (or delete it)"


def _samples_problem(data: Any) -> str | None:
    """What is wrong with a samples record (``_keep_samples``'s shape), or None."""
    if not isinstance(data, dict):
        return f"holds a {type(data).__name__}, not a samples record"
    metrics, names, samples = data.get("metrics", {}), data.get("metric_names", []), data.get(
        "samples", [])  # fmt: skip
    number = (int, float)
    if not isinstance(metrics, dict) or not all(
        isinstance(v, number) and not isinstance(v, bool) for v in metrics.values()
    ):
        return "its 'metrics' are not names with numbers"
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return "its 'metric_names' are not a list of names"
    if not isinstance(samples, list) or not all(
        isinstance(x, dict) and all(isinstance(v, str) for v in x.values()) for x in samples
    ):
        return "its 'samples' are not a list of texts (prompt, reference, generation)"
    return None


def evaluate_records(
    records: list[Any], bases: Mapping[str, Any], eval_dataset: Any
) -> dict[int, dict[str, float] | BaseException]:
    """Generation metrics of executor ``records`` (``AdapterRecord``) that set a
    ``generation_eval``: one batch per resident base model."""
    by_base: dict[str, list[GenTask]] = {}
    for record in records:
        spec = record.spec
        if spec.generation_eval is None:
            continue
        by_base.setdefault(spec.model_key, []).append(
            GenTask(
                run_id=spec.run_id,
                adapter=spec.adapter_name,
                gen=spec.generation_eval,
                generation_config=getattr(spec.model_config, "generation_config", None),
                seed=int(spec.trl_args.seed),
                out_dir=getattr(spec.trl_args, "output_dir", None),
                formatting_func=spec.formatting_func,
                step=record.steps_done,
            )
        )
    out: dict[int, dict[str, float] | BaseException] = {}
    for key, tasks in by_base.items():
        entry = bases[key]
        out.update(run_tasks(entry.model, entry.tokenizer, tasks, eval_dataset))
    return out
