"""What rf-ray keeps on disk: the experiment store, run checkpoints and crash-safe writes.

No Ray here: the driver, the CLI, the dashboard and the actors all read and write through these.
"""
