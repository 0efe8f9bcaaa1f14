"""``cluster.yaml`` passes the checks ``ray up`` itself runs before it touches a cloud.

``ray up`` (``ray/autoscaler/_private/commands.py::_bootstrap_config``) calls ``prepare_config``
(merge with the provider's defaults.yaml, fold setup commands) and then ``validate_config``
(Ray's JSON schema ``ray-schema.json`` plus cross-field checks). Both run offline; the provider
bootstrap after them needs cloud credentials and is not exercised here.
"""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_YAML = Path(__file__).resolve().parents[2] / "cluster.yaml"


@pytest.fixture
def config() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_cluster_yaml_passes_rays_validation(config):
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)

    # One node, and it is the GPU node: the head, with GPU: 1 declared, no workers.
    head = prepared["head_node_type"]
    assert list(prepared["available_node_types"]) == [head]
    assert prepared["available_node_types"][head]["resources"]["GPU"] == 1
    assert prepared["max_workers"] == 0
    # The repo is copied, not fetched, and the setup installs it.
    assert prepared["file_mounts"] == {"~/rf-ray": "."}
    assert any("rf-ray" in c and "pip install" in c for c in prepared["head_setup_commands"])
    # Token authentication is turned on, never off.
    start = " ".join(prepared["head_start_ray_commands"])
    assert "RAY_AUTH_MODE=token" in start
    assert "disabled" not in CLUSTER_YAML.read_text()


def _without_provider(c: dict) -> None:
    del c["provider"]


def _resources_not_a_mapping(c: dict) -> None:
    c["available_node_types"][c["head_node_type"]]["resources"] = "GPU=1"


def _misspelt_field(c: dict) -> None:
    c["setup_comands"] = c.pop("setup_commands")


def _head_type_not_defined(c: dict) -> None:
    c["head_node_type"] = "rf-ray.missing"


@pytest.mark.parametrize(
    "break_it",
    [_without_provider, _resources_not_a_mapping, _misspelt_field, _head_type_not_defined],
)
def test_broken_copies_are_rejected_by_the_same_validator(config, break_it):
    """The check above is not vacuous: the same validator refuses broken variants."""
    prepared = prepare_config(copy.deepcopy(config))
    break_it(prepared)
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        validate_config(prepared)
