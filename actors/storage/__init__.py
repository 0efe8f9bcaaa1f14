"""What rf-ray keeps on disk: the experiment directory and everything in it.

    layout.py      ExperimentDir, RunDir: every path in an experiment directory (one owner)
    lock.py        the directory's lock (one live scheduler per directory)
    store.py       the SQLite store of runs, settings and metrics
    checkpoint.py  run checkpoints (safetensors + JSON), damaged ones named and passed over
    durable.py     crash-safe and private writes (atomic_write, replace_dir, 0600/0700)
    footprint.py   what a start added, removed again when it fails
    trust.py       whose directory it is: refused before reading if not the user's alone

No Ray here: the driver, the CLI, the dashboard and the actors all read and write through these.

* ``store.py``: ``Store``, the experiment's SQLite file (settings, runs, per-step and per-chunk
  metrics); one transaction per write, read-only opens for readers.
* ``checkpoint.py``: a run's checkpoint files (adapter and optimizer tensors in safetensors, the
  rest in JSON): ``save`` (durable), ``load``, ``verify``/``newest_intact`` (damaged files),
  ``export_adapter``. Capturing a live run's state and putting it back is the engine's
  (``actors.engine.snapshot``): nothing here imports the engine.
* ``durable.py``: ``atomic_write``, ``replace_dir`` and private (0600/0700) files and
  directories: a crash never leaves a torn file.
"""
