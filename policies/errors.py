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
    │   └── InfrastructureError     the machine failed the run (disk full, read-only or damaged
    │                               files), not its code: ``resume`` continues it
    └── RunNotPlacedError (RuntimeError)       the executor does not hold the run at the step
                                               the grant expects: re-place it from its checkpoint

The module lives in ``policies/`` because that is the bottom layer: every layer may import it,
and it imports nothing. ``rf_ray`` re-exports the public names.
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


class RunNotPlacedError(RFRayError, RuntimeError):
    """The executor does not hold the run at the step a grant starts from (it restarted, or a
    retried call finds the run elsewhere): the trial re-places it from its checkpoint."""


__all__ = [
    "ConfigError",
    "DamagedFileError",
    "ExperimentExistsError",
    "IllegalTransitionError",
    "InfrastructureError",
    "OpError",
    "RFRayError",
    "RunFailedError",
    "RunNotPlacedError",
    "UnknownKnobError",
    "UntrustedDirectoryError",
]
