"""The CRDs are generated from the pydantic models and stay structural and documented."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tunerag_operator.api import crdgen
from tunerag_operator.api.finetunejob import FineTuneJobSpec
from tunerag_operator.api.kinds import ALL_KINDS

ROOT = Path(__file__).resolve().parents[2]


def test_committed_crds_match_the_models() -> None:
    assert crdgen.main(["--root", str(ROOT), "--check"]) == 0


def test_check_reports_drift(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert crdgen.main(["--root", str(tmp_path)]) == 0
    target = tmp_path / "crds" / "tunerag.dev_finetunejobs.yaml"
    target.write_text(target.read_text().replace("minimum: 1", "minimum: 2", 1))
    assert crdgen.main(["--root", str(tmp_path), "--check"]) == 1
    assert "crds/tunerag.dev_finetunejobs.yaml" in capsys.readouterr().err


def _properties(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    for name, prop in schema.get("properties", {}).items():
        yield f"{path}.{name}", prop
        yield from _properties(prop, f"{path}.{name}")
    if "items" in schema:
        yield from _properties(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _properties(schema["additionalProperties"], f"{path}{{}}")


@pytest.mark.parametrize("kind", ALL_KINDS, ids=lambda k: k.kind)
def test_every_field_is_documented_and_structural(kind: Any) -> None:
    root = crdgen.crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, prop in _properties(root):
        if path == ".metadata":
            continue
        assert prop.get("description"), f"{kind.kind}{path} has no description"
        assert "type" in prop or prop.get("x-kubernetes-preserve-unknown-fields"), f"{kind.kind}{path} has no type"
        for banned in ("$ref", "anyOf", "oneOf", "allOf", "const", "title"):
            assert banned not in prop, f"{kind.kind}{path} uses {banned}"


def test_crd_names_columns_and_category() -> None:
    doc = crdgen.crd(ALL_KINDS[0])
    names = doc["spec"]["names"]
    assert names["shortNames"] == ["ftj"]
    assert names["categories"] == ["tunerag"]
    version = doc["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]][:2] == ["Phase", "Family"]


def test_nested_defaults_are_materialised() -> None:
    spec = crdgen.crd(ALL_KINDS[0])["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert spec["properties"]["method"]["default"]["lora"]["targetModules"] == ["q_proj", "v_proj"]
    assert spec["properties"]["training"]["default"]["seed"] == 42


def test_examples_parse_with_the_models() -> None:
    by_kind = {k.kind: k for k in ALL_KINDS}
    seen = set()
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["apiVersion"].startswith("tunerag.dev/"):
                by_kind[doc["kind"]].spec.model_validate(doc["spec"])
                seen.add(doc["kind"])
    assert seen == set(by_kind)


def test_models_use_camel_case_on_the_wire() -> None:
    spec = FineTuneJobSpec.model_validate({
        "baseModel": {"uri": "file:///m"}, "adapter": {"family": "f"},
        "dataset": {"train": {"uri": "file:///t.jsonl"}}, "output": {"uri": "file:///o"},
        "training": {"maxSteps": 5},
    })
    assert spec.training.max_steps == 5
    assert spec.model_dump(exclude_none=True)["training"]["maxSteps"] == 5
