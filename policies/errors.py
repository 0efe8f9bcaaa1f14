"""Every exception rf-ray raises on purpose, in one place.

    RFRayError                      base of everything below
    ├── ConfigError (ValueError)    bad user input, found before any work starts
    │   ├── UnknownKnobError (TypeError too)   a knob name the TRL/PEFT config does not have
    │   ├── ExperimentExistsError   the experiment name is taken by different data
    │   ├── DamagedFileError        a file of the experiment directory cannot be read
    │   └── UntrustedDirectoryError the experiment directory is not the user's alone
    ├── IllegalTransitionError (ValueError)    a run status change the state machine forbids
    ├── OpError (ValueError)        an interactive-control op that cannot apply (unknown run...)
    ├── RunFailedError (RuntimeError)          a run's slice raised, or its loss went NaN/inf
    │   ├── InfrastructureError     the machine failed the run (disk full, read-only or damaged
    │   │   │                       files), not its code: ``resume`` continues it
    │   │   └── CheckpointError     the run's checkpoint could not be queued or written
    │   └── NoRunTrainedError       run_fit ended: runs failed and none trained
    ├── RunNotPlacedError (RuntimeError)       the executor does not hold the run at the step
    │                                          the grant expects: re-place it from its checkpoint
    └── LockstepTimeoutError (RuntimeError)    a lane of a fused evaluation or GRPO preparation
                                               neither called the model nor finished in time

Why here: every layer raises these (``rf_ray`` refuses a config, the scheduler an op or a
transition, the engine fails a run), and a caller in another layer catches them, so they need a
home that every layer may import. ``policies/`` is the bottom layer and this module imports
nothing, so it is that home; ``rf_ray`` re-exports the public names. Exceptions that never reach
a user stay beside their code as private control flow (the fused path's ``NotFusableError``
fallback signal, the trial's ``ExecutorLostError``).
"""

from __future__ import annotations


class RFRayError(Exception):
    """Base class of every error rf-ray raises on purpose."""


class ConfigError(RFRayError, ValueError):
    """User input is wrong; raised before any actor starts or anything is written."""


class UnknownKnobError(ConfigError, TypeError):
    """A knob name that the target TRL or PEFT config does not define."""


class ExperimentExistsError(ConfigError):
    """An experiment of that name already exists for different data."""


class DamagedFileError(ConfigError):
    """A file of the experiment directory cannot be read (truncated, garbage, not what rf-ray
    wrote); the message names it. ``path`` is the file."""

    def __init__(self, path: object, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path


class UntrustedDirectoryError(ConfigError):
    """An experiment directory (or a file in it) that another user owns or may write: opening
    it could run their code. Refused unless the user opts in (``trust=True``, ``--trust``)."""


class IllegalTransitionError(RFRayError, ValueError):
    """A run status change that the run state machine does not allow."""


class OpError(RFRayError, ValueError):
    """An interactive-control op that cannot be applied; nothing was changed."""


class RunFailedError(RFRayError, RuntimeError):
    """A run's slice raised, or its loss became NaN or infinite."""


class InfrastructureError(RunFailedError):
    """The machine failed a run, not the run's code: a checkpoint could not be written (a full
    disk, a read-only file system) or read back (a damaged file). Once the cause is gone,
    ``resume`` continues the run from its last durable checkpoint."""


class CheckpointError(InfrastructureError):
    """A run's checkpoint could not be queued or written: the run fails, the others go on; it
    is the machine's failure, not the run's, so ``resume`` continues the run once it is fixed."""


class NoRunTrainedError(RunFailedError):
    """``run_fit`` ended with failed runs and not one run that trained: the message names each
    failure (a script whose every run failed must not exit 0)."""


class RunNotPlacedError(RFRayError, RuntimeError):
    """The executor does not hold the run at the step a grant starts from (it restarted, or a
    retried call finds the run elsewhere): the trial re-places it from its checkpoint."""


class LockstepTimeoutError(RFRayError, RuntimeError):
    """A lane (``actors.engine.lockstep``) neither called the model nor finished within its
    step timeout: a user function (a reward, a formatting function) is stuck."""


__all__ = [
    "CheckpointError",
    "ConfigError",
    "DamagedFileError",
    "ExperimentExistsError",
    "IllegalTransitionError",
    "InfrastructureError",
    "LockstepTimeoutError",
    "NoRunTrainedError",
    "OpError",
    "RFRayError",
    "RunFailedError",
    "RunNotPlacedError",
    "UnknownKnobError",
    "UntrustedDirectoryError",
]
