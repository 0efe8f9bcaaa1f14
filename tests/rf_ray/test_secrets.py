"""Knob values that look like secrets are masked everywhere rf-ray writes or prints them (issue
21, item 15): MLflow params, ``rf-ray status`` (table and ``--json``), the dashboard, the live
view and the run summaries in error messages and logs. One rule (``policies.redact``) for all.

Before, only the page masked them: MLflow kept ``hub_token`` in clear and ``rf-ray status --json``
printed it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from actors.storage.store import Store
from actors.tracking import Tracker
from policies.errors import ConfigError
from policies.pruning import NoPruning
from policies.redact import REDACTED, is_secret_key, redact
from policies.settings import SETTINGS_KEY, ExperimentSettings
from rf_ray import cli
from rf_ray.live import LiveView
from rf_ray.specs import RunConfig, describe

SECRET = "hf_SECRETVALUE0123"


@pytest.mark.parametrize(
    ("key", "secret"),
    [("hub_token", True), ("api_key", True), ("model_kwargs.db_password", True),
     ("wandb.secret", True), ("access_token", True), ("model_kwargs.token", True),
     ("client_secret_file", True), ("my-apikey", True),
     # not secrets: a section name, tokenizer special tokens, counts and ids, look-alikes
     ("tokenizer_kwargs.padding_side", False), ("max_length", False), ("keyboard", False),
     ("pad_token", False), ("eos_token", False), ("tokenizer_kwargs.bos_token", False),
     ("pad_token_id", False), ("max_new_tokens", False), ("trainable_token_indices", False)],
)  # fmt: skip
def test_which_knobs_are_secret(key, secret):
    assert is_secret_key(key) is secret


def test_redact_keeps_empty_values_and_every_other_knob():
    params = {"hub_token": SECRET, "api_key": "", "wandb.api_key": None, "learning_rate": 1e-3}
    assert redact(params) == {"hub_token": REDACTED, "api_key": "", "wandb.api_key": None,
                              "learning_rate": 1e-3}  # fmt: skip


def test_mlflow_params_are_masked(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "secrets")
    run_id = tracker.start_run("run-1", {"hub_token": SECRET, "learning_rate": 1e-3}, {})
    assert run_id is not None
    params = MlflowClient(tracking_uri=uri).get_run(run_id).data.params
    assert params == {"hub_token": REDACTED, "learning_rate": "0.001"}


def _store(root: Path) -> Path:
    exp_dir = root / "sweep"
    with Store(exp_dir) as store:
        pruner = NoPruning(metric="train_loss").settings()
        settings = ExperimentSettings(num_chunks=2, pruner=pruner)
        store.set_meta(name="sweep", status="finished", **{SETTINGS_KEY: settings.to_dict()})
        for run_id, token in ((1, SECRET), (2, SECRET + "2")):
            params = {"learning_rate": 1e-3 * run_id, "hub_token": token}
            store.add_run(run_id, params, "completed", total_steps=4, total_chunks=2)
    return exp_dir


def test_rf_ray_status_masks_secrets_in_json_and_table(tmp_path, capsys):
    _store(tmp_path)
    assert cli.main(["status", "sweep", "--path", str(tmp_path), "--json"]) == 0
    out = capsys.readouterr().out
    assert SECRET not in out
    runs = json.loads(out)["runs"]
    assert [r["params"]["hub_token"] for r in runs] == [REDACTED, REDACTED]
    assert cli.main(["status", "sweep", "--path", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert SECRET not in table
    assert "learning_rate" in table  # the differing knobs are still shown


def test_the_live_view_and_run_summaries_mask_secrets(tmp_path, capsys):
    view = LiveView("sweep", {1: {"hub_token": SECRET, "learning_rate": 1e-3}}, ["hub_token"])
    view.update([{"run_id": 1, "status": "running", "chunks_done": 1, "total_chunks": 2,
                  "last_metric": 0.5}])  # fmt: skip
    from rich.console import Console

    console = Console(record=True, width=200)
    console.print(view.render([{"run_id": 1, "status": "running", "chunks_done": 1,
                                "total_chunks": 2, "last_metric": 0.5}]))  # fmt: skip
    text = console.export_text()
    assert SECRET not in text
    assert REDACTED in text
    run = RunConfig(model_name="m", training_args={"hub_token": SECRET})
    assert SECRET not in describe(run)
    assert f"hub_token={REDACTED!r}" in describe(run)


def test_warnings_errors_and_reprs_that_name_a_secret_knob_mask_its_value():
    """The messages that quote a knob's value (an ignored or legacy field's warning, a refused
    value, a config's repr) quote a secret-looking one as ``'***'``: ``hub_token`` is an ignored
    field, so run_fit's warning about it used to print the token."""
    from rf_ray import List, RFSFTConfig
    from rf_ray.compat import ignored_field_warnings
    from rf_ray.legacy import modernize_model_kwargs
    from rf_ray.ops import modified

    run = RunConfig(model_name="m", training_args={"hub_token": SECRET, "push_to_hub": True})
    texts = [ignored_field_warnings([run])["hub_token"]]
    texts += modernize_model_kwargs({"use_auth_token": SECRET})[1].values()
    texts.append(repr(RFSFTConfig(hub_token=SECRET, learning_rate=1e-3)))
    with pytest.raises(ConfigError) as refused:
        modified(run, {"hub_token": List([SECRET, SECRET + "2"])})
    texts.append(str(refused.value))
    assert len(texts) == 4
    assert [t for t in texts if SECRET in t] == []
    assert all(repr(REDACTED) in t for t in texts), texts
