"""Generates the CustomResourceDefinitions from the pydantic models: the one source of truth.

    python -m tunerag_operator.api.crdgen            # write crds/ and the chart's CRD templates
    python -m tunerag_operator.api.crdgen --check    # exit 1 when the committed YAML has drifted

Pydantic's JSON Schema is turned into a Kubernetes *structural* schema: references inlined,
`Optional[X]` collapsed to X, single-value literals made enums, exclusive bounds in OpenAPI 3.0 form, defaults of nested objects
materialised (so the API server defaults nested fields too), titles and `additionalProperties:
false` dropped (unknown fields are pruned by the API server instead), and a free-form object
(`dict[str, Any]`) kept whole with `x-kubernetes-preserve-unknown-fields`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from tunerag_operator.api.common import GROUP, VERSION
from tunerag_operator.api.kinds import ALL_KINDS, CATEGORY, Kind

JSON = dict[str, Any]
CHART_CRD_DIR = Path("charts/tunerag/templates/crds")


class _WithFactoryDefaults(GenerateJsonSchema):
    """Emits defaults for fields with a default_factory (pydantic leaves them out)."""

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        factory = schema.get("default_factory")
        if factory is not None and not schema.get("default_factory_takes_data"):
            schema = {**schema, "default": factory()}  # type: ignore[call-arg]
            schema.pop("default_factory", None)
        return super().default_schema(schema)


def _strip_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_strip_none(v) for v in value]
    return value


def _structural(node: Any, defs: JSON) -> Any:
    if isinstance(node, list):
        return [_structural(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        node = {**target, **node}  # the referring site's description wins
    if "anyOf" in node:
        options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"unions are not structural: {options}")
        node = {**options[0], **node}
        if "$ref" in node:
            return _structural(node, defs)
    if "const" in node:
        node["enum"] = [node.pop("const")]
    for bound, exclusive in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        if isinstance(node.get(exclusive), int | float) and not isinstance(node[exclusive], bool):
            node[bound], node[exclusive] = node[exclusive], True  # JSON Schema 2020-12 -> OpenAPI 3.0
    node.pop("title", None)
    if isinstance(node.get("additionalProperties"), bool):
        # false: unknown fields are pruned anyway; true (a free-form dict): kept, below.
        del node["additionalProperties"]
    if "default" in node:
        default = _strip_none(node["default"])
        if default is None:
            del node["default"]
        else:
            node["default"] = default
    out: JSON = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: _structural(prop, defs) for name, prop in value.items()}
        elif key in ("items", "additionalProperties"):
            out[key] = _structural(value, defs)
        else:
            out[key] = value
    if out.get("type") == "object" and "properties" not in out and "additionalProperties" not in out:
        out["x-kubernetes-preserve-unknown-fields"] = True
    if out.get("type") == "number" and (rules := _fractional_bounds(out)):
        out["x-kubernetes-validations"] = [*out.get("x-kubernetes-validations", []), *rules]
    return out


def _fractional_bounds(node: JSON) -> list[JSON]:
    """CEL rules repeating a number's fractional bounds where the schema alone lets an integer
    through. The API server checks an integer value against the bound cut to an integer
    (kube-openapi's MinimumInt/MaximumInt truncate towards zero), so `holdoutFraction: 0` passed
    `minimum: 0.05` (a minimum above zero, or a maximum below, is loosened); in CEL the value is a
    double and the bound stays what it is."""
    rules = []
    for bound, exclusive, op, words in (("minimum", "exclusiveMinimum", ">", "greater than"),
                                        ("maximum", "exclusiveMaximum", "<", "less than")):
        value = node.get(bound)
        loosened = isinstance(value, float) and not value.is_integer() and (value > 0 if bound == "minimum" else value < 0)
        if loosened:
            strict = node.get(exclusive) is True
            rules.append({"rule": f"self {op}{'' if strict else '='} {value!r}",
                          "message": f"should be {words}{'' if strict else ' or equal to'} {value!r}"})
    return rules


def model_schema(model: type) -> JSON:
    raw = model.model_json_schema(by_alias=True, mode="validation", schema_generator=_WithFactoryDefaults)  # type: ignore[attr-defined]
    defs = raw.pop("$defs", {})
    return _structural(raw, defs)  # type: ignore[no-any-return]


def crd(kind: Kind) -> JSON:
    spec = model_schema(kind.spec)
    status = model_schema(kind.status)
    spec["description"] = spec.get("description") or kind.description
    root = {
        "type": "object",
        "description": kind.description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "APIVersion of the object."},
            "kind": {"type": "string", "description": "Kind of the object."},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
        "x-kubernetes-validations": [{
            "rule": f"size(self.metadata.name) <= {kind.max_name}",
            "message": f"metadata.name must be at most {kind.max_name} characters (child Jobs and Services add a suffix)",
        }, *(dict(rule) for rule in kind.root_rules)],
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{kind.plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.singular,
                "shortNames": list(kind.short_names),
                "categories": [CATEGORY],
            },
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    {k: v for k, v in {
                        "name": c.name, "type": c.type, "jsonPath": c.json_path,
                        "priority": c.priority or None, "description": c.description or None,
                    }.items() if v is not None}
                    for c in kind.columns
                ],
                "schema": {"openAPIV3Schema": root},
            }],
        },
    }


HEADER = "# Generated by `python -m tunerag_operator.api.crdgen` from operator/src/tunerag_operator/api. Do not edit.\n"


def rendered() -> dict[Path, str]:
    """Every generated file, relative to the repository root, with its content."""
    files: dict[Path, str] = {}
    for kind in ALL_KINDS:
        body = yaml.safe_dump(crd(kind), sort_keys=False, width=120)
        files[Path("crds") / f"{GROUP}_{kind.plural}.yaml"] = HEADER + body
        chart_doc = crd(kind)
        chart_doc["metadata"]["annotations"] = {"helm.sh/resource-policy": "keep"}
        chart_body = yaml.safe_dump(chart_doc, sort_keys=False, width=120)
        files[CHART_CRD_DIR / f"{kind.plural}.yaml"] = (
            HEADER + "{{- if .Values.crds.install }}\n" + chart_body + "{{- end }}\n"
        )
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="repository root")
    parser.add_argument("--check", action="store_true", help="fail when the files on disk differ")
    args = parser.parse_args(argv)
    drifted = []
    for rel, content in rendered().items():
        path = args.root / rel
        if args.check:
            if not path.exists() or path.read_text() != content:
                drifted.append(str(rel))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
    if drifted:
        print("CRDs drifted from the models; run `python -m tunerag_operator.api.crdgen`:", *drifted, sep="\n  ", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
