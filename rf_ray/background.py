"""``run_fit`` in a background thread, as RapidFire AI's runs on Colab: the notebook's next
cells (an ``InteractiveController``, say) run while the experiment trains.

``run_fit(blocking=None)`` (the default) trains in the background when ``in_background_by_default``
says so: on Colab, unless ``RF_RAY_BACKGROUND`` is ``0``; anywhere with ``RF_RAY_BACKGROUND=1``.
In a plain Jupyter kernel it blocks, as RapidFire's does (a later ``experiment.end()`` cell must
not cut the training short); ``blocking=False`` returns at once there too.

Threads are kept here, by experiment directory, not on the ``Experiment`` (it stays picklable:
a Tune trainable carries one). ``Experiment.wait()`` joins the thread and re-raises its error.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

BACKGROUND_ENV = "RF_RAY_BACKGROUND"
"""``1``: ``run_fit`` trains in a background thread by default; ``0``: it blocks by default, even
on Colab. Unset: in the background on Colab only."""
JOIN_SECONDS = 60.0
"""How long ``end()`` waits for a background thread once its actors are stopped."""


class Background:
    """One ``run_fit`` waiting in a thread; its error, if any, kept for ``wait()``."""

    def __init__(self, name: str, wait: Callable[[], Any]) -> None:
        self.name = name
        self.error: BaseException | None = None
        self.ending = False
        """Set when the experiment is stopped on purpose (``end()``, ``cancel_current()``):
        the wait then fails as the actors go, and that is no error."""
        self._wait = wait
        self.thread = threading.Thread(target=self._run, name=f"rf-ray-{name}", daemon=True)

    def _run(self) -> None:
        try:
            self._wait()
        except BaseException as e:
            if not self.ending:
                self.error = e
                logger.error("experiment %s: run_fit failed in the background: %s", self.name, e)


_running: dict[Path, Background] = {}


def start(exp_dir: Path, name: str, wait: Callable[[], Any]) -> Background:
    """Run ``wait`` (the experiment's blocking wait) in a thread."""
    background = Background(name, wait)
    _running[exp_dir] = background
    background.thread.start()
    return background


def get(exp_dir: Path) -> Background | None:
    return _running.get(exp_dir)


def stop(exp_dir: Path) -> Background | None:
    """Forget the experiment's thread, marked as ending (its actors are about to be stopped)."""
    background = _running.pop(exp_dir, None)
    if background is not None:
        background.ending = True
    return background


def in_background_by_default() -> bool:
    """Whether ``run_fit(blocking=None)`` trains in a background thread (see module doc)."""
    setting = os.environ.get(BACKGROUND_ENV, "").strip()
    if setting in ("0", "1"):
        return setting == "1"
    return "google.colab" in sys.modules or (
        "IPython" in sys.modules and importlib.util.find_spec("google.colab") is not None
    )


__all__ = ["BACKGROUND_ENV", "Background", "in_background_by_default", "start", "stop"]
