"""Broken manifests are refused by the real API server with a message naming the field and rule."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from tunerag_operator.api.common import GROUP, VERSION
from tunerag_operator.api.kinds import ALL_KINDS

BAD = sorted((Path(__file__).parent / "bad").glob("*.yaml"))
PLURAL = {k.kind: k.plural for k in ALL_KINDS}
SPEC = {k.kind: k.spec for k in ALL_KINDS}
# What the operator's models do not refuse: rules on metadata.name, and CEL rules written before
# every rule had a mirror in the models (the API server refuses such a spec before the operator
# sees it). Every other bad manifest is refused by the models too, so a spec stored before its
# rule existed is reported InvalidSpec by the reconcile, never run.
NOT_IN_THE_MODELS = {
    "ftj-name-too-long", "fts-name-too-long", "vidx-sharded-dotted-name",
    "ftj-lora-with-4bit", "ftj-qlora-without-4bit", "ftj-path-traversal", "fts-chat-template", "fts-drops-the-prompt",
    "fts-no-trigger", "fts-template-sets-baseline", "rp-step-two-actions", "rp-step-weight-above-max-weight",
    "rp-weights-descend", "rp-weights-not-ending-at-100", "vidx-overlap-not-smaller", "vidx-two-sources",
}


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


@pytest.mark.parametrize("path", [p for p in BAD if p.stem not in NOT_IN_THE_MODELS], ids=lambda p: p.stem)
def test_bad_manifest_is_refused_by_the_models_too(path: Path) -> None:
    doc = yaml.safe_load(path.read_text())
    with pytest.raises(ValidationError):
        SPEC[doc["kind"]].model_validate(doc["spec"])


def test_the_list_of_what_the_models_let_through_is_current() -> None:
    """A manifest removed from bad/, or one the models now refuse, leaves this list."""
    assert {p.stem for p in BAD} >= NOT_IN_THE_MODELS
    for path in BAD:
        if path.stem in NOT_IN_THE_MODELS:
            doc = yaml.safe_load(path.read_text())
            SPEC[doc["kind"]].model_validate(doc["spec"])  # raises if it is refused now: take it off the list


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
