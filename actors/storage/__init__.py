"""What rf-ray keeps on disk: the experiment store, run checkpoints and crash-safe writes.

No Ray here: the driver, the CLI, the dashboard and the actors all read and write through these.

* ``store.py``: ``Store``, the experiment's SQLite file (settings, runs, per-step and per-chunk
  metrics); one transaction per write, read-only opens for readers.
* ``checkpoint.py``: a run's checkpoint (adapter and optimizer tensors in safetensors, the rest
  in JSON): ``capture`` (host copy), ``save`` (durable), ``load``, ``restore_into``,
  ``export_adapter``.
* ``durable.py``: ``atomic_write``, ``replace_dir`` and private (0600/0700) files and
  directories: a crash never leaves a torn file.
"""
