"""A finished experiment's directory, walked file by file (issue 21, items 9 and 16).

One real experiment (Ray actors, TRL, PEFT, MLflow's sqlite store; two runs with an eval set and
generation metrics, so every kind of file exists), then ``exp.end()``:

* nothing is left that only a running experiment needs: no ``scheduler.lock``, no SQLite
  ``-wal``/``-shm`` beside any database, and reading it afterwards leaves none either;
* every file is 0600 and every directory 0700 (docs/security.md);
* a copy of the directory elsewhere still finds its own MLflow store;
* built-in metric names are stored by name: no pickle anywhere;
* on copies of it: a garbage spec or a damaged store is one error naming the file (``resume``
  writes nothing; ``list`` and the dashboard show it as unreadable and go on with the others),
  and a directory others can write, or a pickle another user owns, is refused before anything
  in it is unpickled unless the user passes ``--trust`` / ``trust=True``.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
from mlflow.tracking import MlflowClient

from actors.storage.layout import EMBEDDED_TRACKING_URI, ExperimentDir
from actors.storage.store import Store
from policies.errors import UntrustedDirectoryError
from rf_ray import Experiment, List, NoPruning, RFModelConfig, RFSFTConfig
from rf_ray.cli import main
from rf_ray.plan import Plan
from rf_ray.toy import TOY_MODEL_NAME, sft_dataset, sft_eval_dataset


@pytest.fixture(scope="module")
def finished(ray_cluster, tmp_path_factory):
    root = tmp_path_factory.mktemp("at-rest")
    exp = Experiment("at-rest", experiment_path=root)
    config = RFModelConfig(
        model_name=TOY_MODEL_NAME,
        training_args=RFSFTConfig(
            learning_rate=List([3e-3, 1e-4]), lora_rank=4, per_device_train_batch_size=4,
            num_train_epochs=1, max_length=48,
        ),
        generation_config={"max_new_tokens": 4, "do_sample": False},
        eval_metrics_fn=["rougeL"],
        eval_generations=2,
    )  # fmt: skip
    try:
        exp.run_fit(
            config, train_dataset=sft_dataset(8, seed=0), eval_dataset=sft_eval_dataset(4, seed=1),
            num_chunks=1, seed=3, pruner=NoPruning(), live_view=False,
        )  # fmt: skip
    finally:
        exp.end()
    return SimpleNamespace(exp=exp, root=root, dir=exp.dir)


def _leftovers(exp_dir: Path) -> list[str]:
    lock = ExperimentDir(exp_dir).lock_file.name
    return sorted(
        str(p.relative_to(exp_dir))
        for p in exp_dir.rglob("*")
        if p.name.endswith(("-wal", "-shm", "-journal")) or p.name == lock
    )


def test_nothing_of_a_running_experiment_is_left_after_end(finished):
    layout = ExperimentDir(finished.dir)
    assert layout.store.exists()
    assert layout.mlflow_db.exists()
    assert _leftovers(finished.dir) == []
    # Readers of an experiment at rest leave nothing behind either.
    assert finished.exp.get_runs_info()["status"].tolist() == ["completed", "completed"]
    assert main(["status", "at-rest", "--path", str(finished.root)]) == 0
    assert _leftovers(finished.dir) == []


def test_every_file_is_private(finished):
    files = [p for p in finished.dir.rglob("*") if p.is_file()]
    dirs = [finished.dir, *(p for p in finished.dir.rglob("*") if p.is_dir())]
    layout = ExperimentDir(finished.dir)
    run = layout.run(1)
    # the files the issue found 0644 and the directories it found 0755 are among those walked
    adapter = run.adapter_dir / "adapter_config.json"
    for must in (layout.mlflow_db, layout.log_file, run.samples_file, adapter):
        assert must in files, must
    assert any(p.is_relative_to(layout.train_data) for p in files)
    for must in (layout.runs_dir, run.adapter_dir, layout.train_data):
        assert must in dirs, must
    wrong = [
        f"{p.relative_to(finished.dir)}: {oct(stat.S_IMODE(p.stat().st_mode))}"
        for p, mode in [*((f, 0o600) for f in files), *((d, 0o700) for d in dirs)]
        if stat.S_IMODE(p.stat().st_mode) != mode
    ]
    assert wrong == []


def test_a_copied_experiment_finds_its_own_mlflow_store(finished, tmp_path):
    with Store(finished.dir, readonly=True) as store:
        assert store.meta()["tracking_uri"] == EMBEDDED_TRACKING_URI
    copy = tmp_path / "elsewhere" / "at-rest"
    shutil.copytree(finished.dir, copy)
    plan = Plan.from_store(copy)
    assert plan.tracking_uri == f"sqlite:///{ExperimentDir(copy).mlflow_db.resolve()}"
    found = MlflowClient(tracking_uri=plan.tracking_uri).get_experiment_by_name("at-rest")
    assert found is not None
    runs = MlflowClient(tracking_uri=plan.tracking_uri).search_runs([found.experiment_id])
    assert len(runs) == 2


def test_built_in_metrics_are_stored_by_name(finished):
    layout = ExperimentDir(finished.dir)
    assert list(finished.dir.rglob("*.cloudpickle")) == []
    spec = json.loads(layout.run(1).spec_file.read_text())
    assert spec["functions"]["generation_eval"]["metrics_fn"] == {"metrics": ["rougeL"]}


# ------------------------------------------------------------------ copies, damaged or not ours
# (issue 21, items 11, 13 and 14) Each test works on its own copy of the finished experiment.


def _copy(finished: SimpleNamespace, root: Path, name: str = "at-rest") -> Path:
    target = root / name
    shutil.copytree(finished.dir, target)
    return target


def _files(exp_dir: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``exp_dir`` with its size and mode (what a refused command must keep)."""
    return {
        str(p.relative_to(exp_dir)): (p.stat().st_size if p.is_file() else -1, p.stat().st_mode)
        for p in sorted(exp_dir.rglob("*"))
    }


def _one_error_line(capsys: pytest.CaptureFixture[str], command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"rf-ray {command}: error: "), err
    assert "\n" not in err  # one line, no traceback
    assert "Traceback" not in err
    return err


def test_a_garbage_spec_makes_resume_name_the_file_and_write_nothing(finished, tmp_path, capsys):
    exp_dir = _copy(finished, tmp_path)
    spec = ExperimentDir(exp_dir).run(2).spec_file
    spec.write_text('{"format": 1, "config": ')  # cut short
    before = _files(exp_dir)
    assert main(["resume", "at-rest", "--path", str(tmp_path), "--no-live"]) == 2
    err = _one_error_line(capsys, "resume")
    assert str(spec) in err
    assert "is not JSON" in err
    assert _files(exp_dir) == before  # no scheduler.lock, no cluster.json, no SQLite files


def test_a_damaged_store_is_named_and_listed_as_unreadable_beside_the_others(
    finished, tmp_path, capsys
):
    good = _copy(finished, tmp_path, "good")
    bad = _copy(finished, tmp_path)
    store = ExperimentDir(bad).store
    store.write_bytes(store.read_bytes()[:100] + b"\0" * 4096)  # the header survives, no more
    assert main(["resume", "at-rest", "--path", str(tmp_path), "--no-live"]) == 2
    assert str(store) in _one_error_line(capsys, "resume")
    assert main(["status", "at-rest", "--path", str(tmp_path)]) == 2
    assert str(store) in _one_error_line(capsys, "status")
    assert main(["list", "--path", str(tmp_path)]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[3:]}
    assert rows.keys() == {"at-rest", "good"}
    assert rows["at-rest"].split()[1] == "unreadable"
    assert rows["good"].split()[1] == "finished"
    assert ExperimentDir(good).store.exists()


def test_the_dashboard_shows_a_damaged_experiment_and_serves_the_others(finished, tmp_path):
    from rf_ray.dashboard.app import Settings
    from rf_ray.dashboard.reads import Root
    from tests.rf_ray.test_dashboard_http import TIMEOUT, serve

    _copy(finished, tmp_path, "good")
    bad = _copy(finished, tmp_path)
    ExperimentDir(bad).store.write_bytes(b"garbage" * 1000)
    with serve(Settings(root=Root.at(tmp_path))) as base:
        listed = requests.get(base + "/api/experiments", timeout=TIMEOUT)
        state = requests.get(base + "/api/experiments/at-rest", timeout=TIMEOUT)
        good = requests.get(base + "/api/experiments/good", timeout=TIMEOUT)
    assert listed.status_code == 200
    found = {x["name"]: x for x in listed.json()["experiments"]}
    assert found["at-rest"]["status"] == "unreadable"
    assert "rf_ray.db" in found["at-rest"]["error"]
    assert found["good"]["runs"] == 2
    assert state.status_code == 422
    assert str(ExperimentDir(bad).store) in state.json()["error"]
    assert good.status_code == 200


class _Planted:
    """What an attacker plants: unpickling it writes a marker file, then fails."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        code = f"open({str(self.marker)!r}, 'w').write('ran'); 1 / 0"
        return (exec, (code,))


def _plant(exp_dir: Path, marker: Path) -> Path:
    """Run 1's formatting function, replaced by a planted pickle."""
    import pickle

    run = ExperimentDir(exp_dir).run(1)
    record = json.loads(run.spec_file.read_text())
    record["functions"]["formatting_func"] = {"pickle": "functions/formatting_func.cloudpickle"}
    run.spec_file.write_text(json.dumps(record))
    run.functions_dir.mkdir(mode=0o700, exist_ok=True)
    planted = run.functions_dir / "formatting_func.cloudpickle"
    planted.write_bytes(pickle.dumps(_Planted(marker)))
    planted.chmod(0o600)
    return planted


def test_a_directory_others_can_write_is_refused_before_anything_is_unpickled(
    finished, tmp_path, capsys
):
    exp_dir = _copy(finished, tmp_path)
    marker = tmp_path / "planted-code-ran"
    _plant(exp_dir, marker)
    exp_dir.chmod(0o777)
    for command in (["resume", "at-rest", "--no-live"], ["status", "at-rest"]):
        assert main([*command, "--path", str(tmp_path)]) == 2
        err = _one_error_line(capsys, command[0])
        assert f"{exp_dir} is writable by others" in err
        assert f"uid {os.geteuid()}" in err
        assert "--trust" in err
    assert main(["list", "--path", str(tmp_path)]) == 0
    assert "untrusted" in capsys.readouterr().out
    with pytest.raises(UntrustedDirectoryError):
        Experiment("at-rest", experiment_path=tmp_path).get_runs_info()
    assert not marker.exists()
    # The user vouches for it: now it is opened, and the planted code runs.
    info = Experiment("at-rest", experiment_path=tmp_path, trust=True).get_runs_info()
    assert len(info) == 2
    assert main(["resume", "at-rest", "--path", str(tmp_path), "--no-live", "--trust"]) == 2
    assert marker.read_text() == "ran"


@pytest.mark.skipif(os.geteuid() != 0, reason="creating a file another uid owns needs root")
def test_a_pickle_another_user_owns_is_refused_even_for_root(finished, tmp_path, capsys):
    exp_dir = _copy(finished, tmp_path)
    marker = tmp_path / "planted-code-ran"
    planted = _plant(exp_dir, marker)
    os.chown(planted, 65534, 65534)
    assert main(["resume", "at-rest", "--path", str(tmp_path), "--no-live"]) == 2
    err = _one_error_line(capsys, "resume")
    assert f"{planted} is owned by nobody (uid 65534)" in err
    assert not marker.exists()


def test_run_evals_into_a_directory_others_can_write_is_refused(tmp_path):
    """``run_evals`` into an existing directory reads its store and writes into it, as
    ``run_fit`` does; it was the one way in that did not check whose directory it is."""
    from rf_ray.automl import RFvLLMModelConfig
    from rf_ray.toy import TOY_MODEL_NAME
    from tests.rf_ray.test_dashboard_http import make_experiment
    from tests.rf_ray.test_evals import QUERIES, preprocess

    exp_dir = make_experiment(tmp_path, "shared")
    exp_dir.chmod(0o770)
    before = sorted(p.name for p in exp_dir.iterdir())
    exp = Experiment("shared", mode="evals", experiment_path=tmp_path)
    generator = RFvLLMModelConfig(model_config={"model": TOY_MODEL_NAME})
    with pytest.raises(UntrustedDirectoryError, match="is writable by its group"):
        exp.run_evals({"vllm_config": generator, "preprocess_fn": preprocess}, QUERIES,
                      num_shards=1, live_view=False)  # fmt: skip
    assert sorted(p.name for p in exp_dir.iterdir()) == before


@pytest.mark.parametrize(
    ("text", "problem"),
    [("{x", "is not JSON"), ("[]", "holds a list, not a samples record"),
     ('{"metrics": {"rougeL": "high"}, "samples": []}', "its 'metrics' are not names with numbers"),
     ('{"metrics": {}, "samples": [{"prompt": 5}]}', "its 'samples' are not a list of texts")],
)  # fmt: skip
def test_a_damaged_samples_file_is_named_and_status_goes_on(tmp_path, capsys, text, problem):
    """``rf-ray samples`` printed a ``JSONDecodeError`` or ``ValueError`` traceback, and
    ``rf-ray status`` (which reads each run's generation metrics there) an ``AttributeError``."""
    from tests.rf_ray.test_dashboard_http import make_experiment

    exp_dir = make_experiment(tmp_path, "sweep")
    samples = ExperimentDir(exp_dir).run(1).samples_file
    samples.parent.mkdir(mode=0o700, parents=True)
    samples.write_text(text)
    assert main(["samples", "sweep", "1", "--path", str(tmp_path)]) == 2
    err = _one_error_line(capsys, "samples")
    assert f"{samples}: {problem}" in err
    assert main(["status", "sweep", "--path", str(tmp_path)]) == 0
    assert "3 runs" in capsys.readouterr().out


def test_a_moved_evals_experiment_reads_its_own_pipeline_states(tmp_path):
    """The store keeps each pipeline's last state file as an absolute path: in a copied or moved
    directory ``get_evals_results()`` read the original's files, or raised a bare
    ``FileNotFoundError`` once the original was gone. Resume takes checkpoints the same way
    (``ExperimentDir.own_path``)."""
    from policies.errors import DamagedFileError

    moved = tmp_path / "new-home" / "ev"
    with Store(moved) as store:
        store.set_meta(name="ev", status="finished")
        store.add_run(1, {"k": 2}, "completed", total_steps=8, total_chunks=2)
        store.update_run(1, checkpoint="/gone/old-home/ev/runs/1/evals_state-00000008.json")
    state = ExperimentDir(moved).run(1).path / "evals_state-00000008.json"
    state.parent.mkdir(mode=0o700, parents=True)
    state.write_text(json.dumps({"results": {"query": ["q"]}, "cumulative": {"MRR": 0.5}}))
    exp = Experiment("ev", mode="evals", experiment_path=moved.parent)
    assert exp.get_evals_results() == {1: ({"query": ["q"]}, {"MRR": 0.5})}
    state.unlink()
    with pytest.raises(DamagedFileError, match=f"{state}: missing"):
        exp.get_evals_results()
    # a path outside any runs/<id>/ (an older rf-ray's) is kept as recorded
    assert ExperimentDir(moved).own_path(1, "/elsewhere/ckpt") == Path("/elsewhere/ckpt")


def test_listing_a_root_with_another_users_private_directory_goes_on(tmp_path, monkeypatch, capsys):
    """A shared root holds another user's experiment (mode 0700): looking for its store raised
    ``PermissionError``, so ``rf-ray list`` printed a traceback and the dashboard's list
    answered 500. Such a directory is left out; the user's own experiments are listed. (Fault
    injected: the tests may run as root, whom no mode stops.)"""
    import pathlib

    from rf_ray.dashboard.reads import Root, list_experiments
    from tests.rf_ray.test_dashboard_http import make_experiment

    make_experiment(tmp_path, "mine")
    theirs = make_experiment(tmp_path, "theirs")
    real_stat = pathlib.Path.stat

    def stat(self, *args, **kwargs):
        if self.is_relative_to(theirs) and self != theirs:  # the entry itself may be seen
            raise PermissionError(13, "Permission denied", str(self))
        return real_stat(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "stat", stat)
    assert main(["list", "--path", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "mine " in out
    assert "theirs" not in out
    assert [e["name"] for e in list_experiments(Root.at(tmp_path))] == ["mine"]
    for command in (["status", "theirs"], ["samples", "theirs", "1"]):  # named: one line
        assert main([*command, "--path", str(tmp_path)]) == 2
        assert "Permission denied" in _one_error_line(capsys, command[0])


def test_a_moved_evals_experiment_reads_its_results_from_where_it_is_now(tmp_path):
    """The store records each pipeline's state file by its absolute path; once the directory is
    moved, that path is gone and the results are read where the layout puts them."""
    from rf_ray.evals.run import read_results

    before, after = tmp_path / "before" / "evals", tmp_path / "after" / "evals"
    state = ExperimentDir(before).run(1).evals_state(4)
    with Store(before) as store:
        store.add_run(1, {}, "completed", total_steps=4, total_chunks=2)
        store.update_run(1, steps_done=4, chunks_done=2, checkpoint=str(state))
    state.parent.mkdir(parents=True)
    state.write_text(json.dumps({"results": {"answer": ["a"]}, "cumulative": {"em": 1.0}}))
    after.parent.mkdir()
    shutil.move(before, after)
    assert read_results(after) == {1: ({"answer": ["a"]}, {"em": 1.0})}
