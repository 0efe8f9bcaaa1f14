"""Which metrics a run reports after each chunk, known before it starts: ``run_fit`` refuses a
pruner metric that a run can never report (``check_pruner_metric``).

A chunk's metrics (``actors.scheduler.chunk_metrics``) are the means of the run's step metrics,
``loss`` as ``train_loss`` (``step`` and ``learning_rate`` left out), and, with an eval set, the
eval metrics of its last slice. Step metrics are ``loss``, ``grad_norm`` and what the run's TRL
trainer collects (its ``_metrics["train"]``, TRL 1.16: ``TRAINER_METRICS``); eval metrics are
``eval_loss``, the eval loop's timings, ``eval_`` + each of the trainer's metrics, and a run's
generation metrics (``eval_metrics_fn``: the names of a ``MetricSet``, and ``gen_seconds``).

Where user code names metrics, the names are not known before a chunk ends: a TRL
``compute_metrics`` adds ``eval_*`` names, an ``eval_metrics_fn`` function any names, and a
GRPO reward function any names through TRL's ``log_metric``. There the scheduler finds out at
the first chunk (``SchedulerCore.pruning_error``). ``tests/rf_ray/test_metric_names.py`` trains
one real slice per algorithm and checks that these sets hold every name it logged.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from policies.errors import ConfigError
from rf_ray.metrics import MetricSet
from rf_ray.specs import RunConfig, describe

STEP_METRICS = ("train_loss", "grad_norm", "epoch")
"""What every run reports (as chunk metric names), whatever its algorithm."""

TRAINER_METRICS: dict[str, tuple[str, ...]] = {
    "SFT": ("entropy", "mean_token_accuracy", "num_tokens", "aux_loss"),
    "DPO": (
        "entropy", "num_tokens", "mean_token_accuracy", "aux_loss",
        "logits/chosen", "logits/rejected", "logps/chosen", "logps/rejected",
        "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
    ),
    "GRPO": (
        "num_tokens", "reward", "reward_std", "frac_reward_zero_std", "kl", "entropy",
        "entropy_coef", "policy_loss", "aux_loss", "step_time",
        "completions/mean_length", "completions/min_length", "completions/max_length",
        "completions/clipped_ratio", "completions/mean_terminated_length",
        "completions/min_terminated_length", "completions/max_terminated_length",
        "clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean",
        "clip_ratio/low_min", "clip_ratio/high_max", "cispo_clip_ratio", "vespo/phi_seq_mean",
        "tools/call_frequency", "tools/failure_frequency",
        "sampling/sampling_logp_difference/mean", "sampling/sampling_logp_difference/max",
        "sampling/importance_sampling_ratio/min", "sampling/importance_sampling_ratio/mean",
        "sampling/importance_sampling_ratio/max",
    ),
}  # fmt: skip
"""The names each algorithm's TRL trainer collects (TRL 1.16), some only with certain settings
(``kl`` with ``beta`` > 0, ``aux_loss`` for mixture-of-experts models, ...). GRPO adds
``rewards/<reward function>/mean`` and ``/std`` per reward function."""

EVAL_LOOP_METRICS = (
    "eval_loss",
    "eval_runtime",
    "eval_samples_per_second",
    "eval_steps_per_second",
    "eval_model_preparation_time",
)
"""What ``Trainer.evaluate`` reports besides the trainer's own metrics."""


@dataclass(frozen=True)
class ReportedMetrics:
    """The chunk metric names one run reports (``names``), and where user code may add more."""

    names: frozenset[str]
    any_eval_name: bool = False
    """A TRL ``compute_metrics`` may add any ``eval_*`` name."""
    any_name: bool = False
    """User code may add any name (an ``eval_metrics_fn`` function, GRPO's ``log_metric``)."""

    def may_report(self, metric: str) -> bool:
        return (
            metric in self.names
            or self.any_name
            or (self.any_eval_name and metric.startswith("eval_"))
        )


def reported_metrics(run: RunConfig, has_eval: bool) -> ReportedMetrics:
    """The chunk metrics ``run`` reports, with an eval set or without."""
    trainer = set(TRAINER_METRICS.get(run.trainer_type, ()))
    any_name = run.trainer_type not in TRAINER_METRICS
    if run.trainer_type == "GRPO":
        # Reward functions may log metrics of any name through TRL's ``log_metric`` kwarg.
        any_name = True
        for func in run.reward_funcs or ():
            name = func.split("/")[-1] if isinstance(func, str) else getattr(func, "__name__", "")
            trainer.update({f"rewards/{name}/mean", f"rewards/{name}/std"})
    names = set(STEP_METRICS) | trainer
    any_eval = False
    if has_eval:
        names |= set(EVAL_LOOP_METRICS) | {f"eval_{n}" for n in trainer}
        any_eval = run.compute_metrics is not None
        gen = run.generation_eval
        if gen is not None:
            names.add("gen_seconds")
            if isinstance(gen.metrics_fn, MetricSet):
                names.update(gen.metrics_fn.names)
            else:
                any_name = True
    return ReportedMetrics(frozenset(names), any_eval, any_name)


def check_pruner_metric(
    metric: str, runs: Iterable[RunConfig], has_eval: bool, whose: str = "the pruner's"
) -> None:
    """Refuse (``ConfigError``) a pruner metric that some run can never report: an ``eval_*``
    metric without an eval set, or a name its algorithm never logs. The error names the
    metric (``whose`` metric: a config group's that steers on one, ``ConfigGroup.steers_on``),
    the runs, the metrics every run reports and what to do."""
    runs = list(runs)
    if not runs:
        return  # a Tune experiment adds its runs later: the first chunk tells
    reported = [reported_metrics(run, has_eval) for run in runs]
    missing = [run for run, r in zip(runs, reported) if not r.may_report(metric)]
    if not missing:
        return
    common = sorted(frozenset.intersection(*(r.names for r in reported)))
    if metric.startswith("eval_") and not has_eval:
        raise ConfigError(
            f"{whose} metric {metric!r} is an eval metric, but run_fit has no "
            f"eval_dataset: pass eval_dataset=..., or prune on a training metric, e.g. "
            f"SuccessiveHalving(metric='train_loss'); the runs report: {', '.join(common)}"
        )
    which = "no run" if len(missing) == len(runs) else (
        f"{len(missing)} of the {len(runs)} runs ({describe(missing[0])}"
        f"{', ...' if len(missing) > 1 else ''})"
    )  # fmt: skip
    raise ConfigError(
        f"{whose} metric {metric!r} is reported by {which}: every run reports "
        f"{', '.join(common)}. Name one of these, e.g. SuccessiveHalving(metric='train_loss'), "
        "or leave metric=None for the default (eval_loss with an eval set, else train_loss; "
        "GRPO: reward)"
    )


__all__ = [
    "EVAL_LOOP_METRICS",
    "STEP_METRICS",
    "TRAINER_METRICS",
    "ReportedMetrics",
    "check_pruner_metric",
    "reported_metrics",
]
