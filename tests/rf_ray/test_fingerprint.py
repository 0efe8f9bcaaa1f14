"""The data fingerprint hashes the rows as the trainer sees them (issue 12, item 7).

``shuffle``, ``select`` and ``filter`` keep the parent's Arrow table and add an indices mapping;
a fingerprint of the table alone called them "the same data", so reusing an experiment name with
them silently trained on the old copy. Now they differ (and reuse is refused), equal rows give
equal prints however they are laid out, in any process, and hashing holds one batch of rows at a
time, never a flattened copy.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pytest
from datasets import Dataset

from policies.errors import ExperimentExistsError
from rf_ray import Experiment, RFModelConfig, RFSFTConfig
from rf_ray.data import dataset_fingerprint
from rf_ray.toy import TOY_MODEL_NAME, sft_dataset

ROOT = Path(__file__).resolve().parents[2]


def _print(ds) -> str:
    return dataset_fingerprint(ds, None)


def _variants(ds) -> dict[str, Dataset]:
    return {
        "shuffled": ds.shuffle(seed=3),
        "selected": ds.select([5, 1, 2, 3]),
        "first-half": ds.select(range(len(ds) // 2)),
        "filtered": ds.filter(lambda row, i: i != 7, with_indices=True),
    }


def test_shuffled_selected_or_filtered_rows_have_another_print():
    ds = sft_dataset(32)
    prints = {"original": _print(ds), **{k: _print(v) for k, v in _variants(ds).items()}}
    assert len(set(prints.values())) == len(prints), prints


def test_the_same_rows_have_the_same_print_however_they_are_laid_out():
    ds = sft_dataset(32)
    rechunked = Dataset(pa.concat_tables([ds.data.table.slice(0, 10), ds.data.table.slice(10)]))
    same = [ds.select(range(len(ds))), ds.select(list(range(len(ds)))), rechunked]
    assert {_print(d) for d in same} == {_print(ds)}
    shuffled = ds.shuffle(seed=3)
    assert _print(shuffled.flatten_indices()) == _print(shuffled)
    assert dataset_fingerprint(ds, ds) != dataset_fingerprint(ds, None)


def test_the_print_is_the_same_in_another_process():
    code = textwrap.dedent(
        """
        from rf_ray.data import dataset_fingerprint
        from rf_ray.toy import sft_dataset
        ds = sft_dataset(32)
        print(dataset_fingerprint(ds, None), dataset_fingerprint(ds.shuffle(seed=3), ds))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={"PYTHONPATH": str(ROOT), "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
             "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    ds = sft_dataset(32)
    assert out.stdout.split() == [_print(ds), dataset_fingerprint(ds.shuffle(seed=3), ds)]


def test_hashing_holds_one_batch_not_a_copy_of_the_dataset(tmp_path):
    """10 MB of rows on disk (memory-mapped, as datasets loads them), shuffled: the fingerprint's
    peak Python and Arrow allocations stay far below the data size."""
    rows = 100_000
    Dataset.from_dict({"text": [f"example {i} " + "x" * 90 for i in range(rows)]}).save_to_disk(
        str(tmp_path / "big")
    )
    code = textwrap.dedent(
        f"""
        import tracemalloc
        import datasets, pyarrow as pa
        from rf_ray.data import dataset_fingerprint
        ds = datasets.load_from_disk({str(tmp_path / "big")!r}).shuffle(seed=0)
        pool = pa.default_memory_pool()
        base = pool.max_memory()
        tracemalloc.start()
        dataset_fingerprint(ds, None)
        print(ds.data.nbytes, tracemalloc.get_traced_memory()[1], pool.max_memory() - base)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={"PYTHONPATH": str(ROOT), "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
             "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    data, python_peak, arrow_peak = map(int, out.stdout.split())
    assert data > 10 * 2**20
    assert python_peak < 2 * 2**20, python_peak
    assert arrow_peak < 2 * 2**20, arrow_peak


@pytest.fixture(scope="module")
def trained(ray_cluster, tmp_path_factory):
    """A small finished experiment on 16 rows."""
    exp = Experiment("fingerprint", experiment_path=tmp_path_factory.mktemp("fp"))
    config = RFModelConfig(
        model_name=TOY_MODEL_NAME,
        training_args=RFSFTConfig(per_device_train_batch_size=4, num_train_epochs=1,
                                  max_length=48, lora_rank=4),
    )  # fmt: skip
    try:
        exp.run_fit(config, train_dataset=sft_dataset(16), num_chunks=1, live_view=False)
    finally:
        exp.end()
    return exp, config


@pytest.mark.parametrize("variant", ["shuffled", "selected", "first-half", "filtered"])
def test_reusing_the_name_with_other_rows_is_refused(trained, variant):
    exp, config = trained
    runs_before = exp.get_runs_info()[["run_id", "status"]].to_dict("records")
    again = Experiment("fingerprint", experiment_path=exp.dir.parent)
    with pytest.raises(ExperimentExistsError, match="different training data"):
        again.run_fit(config, train_dataset=_variants(sft_dataset(16))[variant], live_view=False)
    assert again.get_runs_info()[["run_id", "status"]].to_dict("records") == runs_before
