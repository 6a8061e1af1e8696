"""Broken manifests are refused by the real API server with a message naming the field and rule."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tunerag_operator.api.common import GROUP, VERSION
from tunerag_operator.api.kinds import ALL_KINDS

BAD = sorted((Path(__file__).parent / "bad").glob("*.yaml"))
PLURAL = {k.kind: k.plural for k in ALL_KINDS}


def _create(api: client.ApiClient, namespace: str, doc: dict[str, Any]) -> dict[str, Any]:
    return client.CustomObjectsApi(api).create_namespaced_custom_object(  # type: ignore[no-any-return]
        GROUP, VERSION, namespace, PLURAL[doc["kind"]], doc
    )


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_bad_manifest_is_rejected_with_field_and_rule(api: client.ApiClient, namespace: str, path: Path) -> None:
    text = path.read_text()
    expected = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("# expect:")]
    assert expected, f"{path.name} says nothing about the error it expects"
    with pytest.raises(ApiException) as info:
        _create(api, namespace, yaml.safe_load(text))
    assert info.value.status == 422
    message = json.loads(info.value.body)["message"]
    for fragment in expected:
        assert fragment in message, f"{path.name}: {fragment!r} not in {message!r}"


ADAPTER = {
    "apiVersion": f"{GROUP}/{VERSION}", "kind": "AdapterVersion",
    "metadata": {"name": "demo-v1"},
    "spec": {
        "family": "demo", "version": 1, "baseModel": {"uri": "file:///models/base"},
        "artifact": {"uri": "file:///artifacts/demo/1", "sha256": "a" * 64},
    },
}


def test_adapterversion_spec_is_immutable(api: client.ApiClient, namespace: str) -> None:
    _create(api, namespace, ADAPTER)
    custom = client.CustomObjectsApi(api)
    with pytest.raises(ApiException) as info:
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, "adapterversions", "demo-v1", {"spec": {"version": 2}}
        )
    assert info.value.status == 422
    assert "AdapterVersion spec is immutable" in json.loads(info.value.body)["message"]
    # Labels and annotations stay editable: only the spec is frozen.
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "adapterversions", "demo-v1", {"metadata": {"labels": {"team": "a"}}}
    )


def test_defaults_are_applied_by_the_api_server(api: client.ApiClient, namespace: str) -> None:
    created = _create(api, namespace, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "FineTuneJob", "metadata": {"name": "defaults"},
        "spec": {
            "baseModel": {"uri": "file:///m"}, "adapter": {"family": "f"},
            "dataset": {"train": {"uri": "file:///t.jsonl"}}, "output": {"uri": "file:///o"},
        },
    })
    spec = created["spec"]
    assert spec["method"] == {
        "type": "lora",
        "lora": {"r": 16, "alpha": 32, "dropout": 0.05, "targetModules": ["q_proj", "v_proj"]},
    }
    assert spec["dataset"]["rules"]["minRows"] == 8
    assert spec["dataset"]["train"]["format"] == "jsonl"
    assert spec["gates"]["maxRetentionRegression"] == 0.05
