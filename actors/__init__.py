"""The runtime rf-ray's driver starts: Ray actor shells, and the plain parts they hand work to.

Layers import one way: ``rf_ray`` -> ``actors`` -> ``policies``; nothing here imports
``rf_ray``. An actor is a shell: a few lines per method handing the request to a plain object
that is testable without Ray.

Actor shells and the messages between them:

* ``scheduler_actor.py``: ``SchedulerActor``, one per experiment: grants slices, applies
  pruning and IC ops, the only writer of the store while the experiment runs; its plain core is
  ``scheduler.py`` (``SchedulerCore``: the run table, one row per run).
* ``trial_actor.py``: ``TrialActor``, one per live run: asks for a slice, places the run on the
  executor, waits until the slice is durable, reports, logs.
* ``base_model_actor.py``: ``BaseModelActor``, one per GPU: the Ray shell around the engine's
  ``Executor``; gathers fused groups, writes checkpoints in the background.
* ``tracking_actor.py``: ``TrackingActor``, one per experiment: the only MLflow writer; its
  plain part is ``tracking.py`` (``Tracker``, one per run).
* ``messages.py``: the typed messages that cross actor boundaries (``RunEntry``, ``Grant``,
  ``Exit``, ``SliceResult``, ``Report``, ``ReportAck``).

Folders:

* ``engine/``: the training engine (torch, TRL, PEFT; no Ray): the executor and its parts, the
  fused path, generation, the per-algorithm TRL glue. Map in ``actors/engine/__init__.py``.
* ``storage/``: what is kept on disk (the experiment store, checkpoints, crash-safe writes); no
  Ray. Map in ``actors/storage/__init__.py``.
"""
