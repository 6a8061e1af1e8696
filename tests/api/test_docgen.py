"""docs/ cannot rot: the API reference is generated from the models (and checked like the CRDs),
every reason the code puts on a condition, an Event or a workload result has a section in
docs/troubleshooting.md, every tunerag.dev manifest in docs/*.md is valid (pydantic models; with
the local control plane, the API server's schema and CEL rules too), the chart values shown in
the docs render, and relative links between the docs resolve."""

from __future__ import annotations

import ast
import functools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from chart.conftest import Helm
from chart.conftest import helm as helm  # the session fixture, reused here
from tunerag_operator.api import crdgen, docgen
from tunerag_operator.api.common import API_VERSION, DNS_LABEL, GROUP, VERSION
from tunerag_operator.api.kinds import ALL_KINDS, Kind
from tunerag_operator.references import PROBLEM_REASONS

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
TROUBLESHOOTING = DOCS / "troubleshooting.md"
# The pages this suite keeps honest (the other docs are checked by their own tests, if any).
PAGES = ("api.md", "concepts.md", "tutorial.md", "operations.md", "troubleshooting.md")
SOURCES = (ROOT / "operator" / "src" / "tunerag_operator", ROOT / "workloads" / "src" / "tunerag_workloads")
KINDS = {k.kind: k for k in ALL_KINDS}
VALUES_MARKER = "# tunerag-values.yaml"

# --------------------------------------------------------------------------------------------
# The API reference
# --------------------------------------------------------------------------------------------


def test_committed_api_reference_matches_the_models() -> None:
    assert docgen.main(["--root", str(ROOT), "--check"]) == 0, "run `python -m tunerag_operator.api.docgen`"


def test_check_reports_drift(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert docgen.main(["--root", str(tmp_path)]) == 0
    target = tmp_path / "docs" / "api.md"
    assert docgen.main(["--root", str(tmp_path), "--check"]) == 0
    target.write_text(target.read_text().replace("≤ 512", "≤ 513", 1))
    assert docgen.main(["--root", str(tmp_path), "--check"]) == 1
    assert "docs/api.md" in capsys.readouterr().err


def _paths(schema: dict[str, Any], path: str) -> Iterator[str]:
    for name, prop in schema.get("properties", {}).items():
        yield f"{path}.{name}"
        yield from _paths(prop, f"{path}.{name}")
        if isinstance(prop.get("items"), dict):
            yield from _paths(prop["items"], f"{path}.{name}[]")


def _rules(schema: Any) -> Iterator[str]:
    if isinstance(schema, dict):
        for v in schema.get("x-kubernetes-validations", []):
            yield v["rule"]
        for value in schema.values():
            yield from _rules(value)
    elif isinstance(schema, list):
        for value in schema:
            yield from _rules(value)


@pytest.mark.parametrize("kind", ALL_KINDS, ids=lambda k: k.kind)
def test_reference_lists_every_field_and_rule(kind: Kind) -> None:
    text = docgen.render()
    root = crdgen.crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    section = text[text.index(f"\n## {kind.kind}\n"):]
    for part in ("spec", "status"):
        for path in _paths(root["properties"][part], part):
            assert f"| `{path}` |" in section, f"{kind.kind} {path} is missing from the reference"
    for rule in _rules(root):
        assert f"`{rule}`" in section, f"{kind.kind}: CEL rule {rule!r} is missing from the reference"
    for column in kind.columns:
        assert f"`{column.json_path}`" in section


# --------------------------------------------------------------------------------------------
# Manifests in the docs
# --------------------------------------------------------------------------------------------

FENCE = re.compile(r"^```ya?ml[^\n]*\n(.*?)^```", re.S | re.M)


def yaml_blocks() -> list[tuple[str, str]]:
    """(id, body) of every ```yaml block of the pages, the id being `page:line`."""
    blocks = []
    for page in PAGES:
        text = (DOCS / page).read_text()
        for m in FENCE.finditer(text):
            blocks.append((f"{page}:{text.count(chr(10), 0, m.start()) + 1}", m.group(1)))
    return blocks


def tunerag_manifests() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for block_id, body in yaml_blocks():
        for i, doc in enumerate(yaml.safe_load_all(body)):
            if isinstance(doc, dict) and str(doc.get("apiVersion", "")).startswith(f"{GROUP}/"):
                out.append((f"{block_id}#{i}", doc))
    return out


@pytest.mark.parametrize(("block_id", "body"), yaml_blocks(), ids=[b for b, _ in yaml_blocks()])
def test_every_yaml_block_parses(block_id: str, body: str) -> None:
    assert list(yaml.safe_load_all(body)), f"{block_id} is empty"


MANIFESTS = tunerag_manifests()


@pytest.mark.parametrize(("doc_id", "doc"), MANIFESTS, ids=[d for d, _ in MANIFESTS])
def test_manifest_in_docs_matches_the_models(doc_id: str, doc: dict[str, Any]) -> None:
    assert doc["apiVersion"] == API_VERSION, f"{doc_id}: apiVersion"
    assert doc.get("kind") in KINDS, f"{doc_id}: unknown kind {doc.get('kind')!r}"
    assert set(doc) <= {"apiVersion", "kind", "metadata", "spec"}, f"{doc_id}: unexpected top-level keys"
    name = doc["metadata"]["name"]
    assert re.fullmatch(DNS_LABEL, name) and len(name) <= 52, f"{doc_id}: metadata.name {name!r}"
    KINDS[doc["kind"]].spec.model_validate(doc["spec"])  # raises with the field and the problem


def test_docs_show_the_four_pipeline_kinds() -> None:
    """The tutorial and the concepts show one of each; a block extraction that finds nothing fails here."""
    assert {"FineTuneJob", "AdapterVersion", "VectorIndex", "RolloutPolicy"} <= {doc["kind"] for _, doc in MANIFESTS}


def test_manifests_in_docs_pass_admission(api: client.ApiClient, namespace: str) -> None:
    """The API server's structural schema and CEL rules, which pydantic does not evaluate."""
    custom = client.CustomObjectsApi(api)
    for doc_id, doc in MANIFESTS:
        body = {**doc, "metadata": {**doc["metadata"], "namespace": namespace}}
        try:
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, KINDS[doc["kind"]].plural, body, dry_run="All")
        except client.exceptions.ApiException as exc:
            pytest.fail(f"{doc_id} refused by the API server: {exc.body}")


def test_chart_values_in_docs_render(helm: Helm, tmp_path: Path) -> None:
    found = [(block_id, body) for block_id, body in yaml_blocks() if body.startswith(VALUES_MARKER)]
    assert found, f"no yaml block starts with {VALUES_MARKER!r}"
    for block_id, body in found:
        values = tmp_path / "values.yaml"
        values.write_text(body)
        objects = helm.render("-f", str(values))
        wanted = yaml.safe_load(body)
        deployment = next(o for o in objects if o["kind"] == "Deployment")
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert container["image"] == f"{wanted['image']['repository']}:{wanted['image']['tag']}", block_id
        assert env["TUNERAG_NAMESPACES"] == ",".join(wanted.get("watchNamespaces", [])), block_id


# --------------------------------------------------------------------------------------------
# Reasons: every one the code uses has a section in troubleshooting.md
# --------------------------------------------------------------------------------------------

# Calls whose first argument is a reason: Problem(reason, message), Blocked(...), the workloads'
# WorkloadError and RetrievalUnavailable, Pass.rollback(reason, ...), Pass.event(reason, ...), and a
# FineTuneSchedule pass's fail_run(reason, ...) and skip_run(reason, ...) (a run's history record).
FIRST_ARG = {"Problem", "Blocked", "WorkloadError", "RetrievalUnavailable", "rollback", "event", "fail_run", "skip_run"}
# events.info/warn(obj, reason, ...) and kopf.info/warn(body, reason=...).
EVENT_MODULES = {"events", "kopf"}
STATUSES = {"True", "False", "Unknown"}
RUN_PHASES = {"Pending", "Running", "Succeeded", "Failed"}
# Reasons that reach users but are no string literal of ours: the Job controller's Failed
# conditions (copied by runstate.interpret), FineTuneJob phases posted as Event reasons, and the
# baseline gate's reasons, built from the serving workload's Adapter* ones (finetune/evaluate.py).
NOT_LITERAL = {"BackoffLimitExceeded", "DeadlineExceeded", "PodFailurePolicy", "Succeeded", "Rejected",
               "BaselineNotFound", "BaselineInvalid", "BaselineChecksumMismatch"}


def _str(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _strs(node: ast.AST | None) -> Iterator[str | None]:
    """A string literal, or both branches of `"A" if cond else "B"`."""
    if isinstance(node, ast.IfExp):
        yield from _strs(node.body)
        yield from _strs(node.orelse)
    else:
        yield _str(node)


def _name(func: ast.expr) -> str | None:
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None


def _is_get_reason(node: ast.AST) -> bool:
    """`x.get("reason", ...)`."""
    return isinstance(node, ast.Call) and _name(node.func) == "get" and bool(node.args) and _str(node.args[0]) == "reason"


def _reasons(node: ast.AST) -> Iterator[str | None]:
    if isinstance(node, ast.Call):
        name, args = _name(node.func), node.args
        # `.event` also names kopf.on.event(group, ...): only a method of a Pass (`self.event`) counts.
        on_attribute = isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Attribute)
        if name in FIRST_ARG and args and not (name == "event" and on_attribute):
            yield _str(args[0])
        if name == "set_condition" and len(args) > 3:  # set_condition(conds, type, status, reason, ...)
            yield _str(args[3])
        if name in ("info", "warn") and isinstance(node.func, ast.Attribute) and _name(node.func.value) in EVENT_MODULES:
            yield _str(args[1]) if len(args) > 1 else None
            yield from (_str(kw.value) for kw in node.keywords if kw.arg == "reason")
        if name == "state" and len(args) > 1 and _str(args[0]) in RUN_PHASES:  # runstate: state(phase, reason, msg)
            yield _str(args[1])
        if _is_get_reason(node) and len(args) == 2:  # result.get("reason", "Default")
            yield _str(args[1])
    elif isinstance(node, ast.Tuple) and len(node.elts) == 3 and _str(node.elts[0]) in STATUSES:
        yield _str(node.elts[1])  # ("False", reason, message): a Ready condition to set
    elif isinstance(node, ast.BoolOp) and isinstance(node.op, ast.Or) and _is_get_reason(node.values[0]):
        yield _str(node.values[-1])  # x.get("reason") or "Default"
    elif isinstance(node, ast.Dict):
        for key, value in zip(node.keys, node.values, strict=True):
            if _str(key) == "reason":  # {"reason": ...}: a status.history record
                yield from _strs(value)


@functools.cache
def reasons_in_code() -> dict[str, set[str]]:
    """Every reason literal in the operator and the workloads, with the files that use it."""
    found: dict[str, set[str]] = {r: {"operator/src/tunerag_operator/references.py"} for r in PROBLEM_REASONS}
    for source in SOURCES:
        for path in sorted(source.rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                for reason in _reasons(node):
                    if reason and reason not in STATUSES:
                        found.setdefault(reason, set()).add(str(path.relative_to(ROOT)))
    return found


CODE_SPAN = re.compile(r"`([A-Za-z]+)`")


def reasons_in_troubleshooting() -> set[str]:
    """Reasons with a section: named in a heading, or in the first cell of a table row."""
    covered: set[str] = set()
    for line in TROUBLESHOOTING.read_text().splitlines():
        if line.startswith("#"):
            covered |= set(CODE_SPAN.findall(line))
        elif line.startswith("|"):
            covered |= set(CODE_SPAN.findall(line.split("|")[1]))
    return covered


def test_reason_collector_sees_every_source() -> None:
    found = reasons_in_code()
    for reason in ("SecretNotFound", "InvalidSpec", "GateFailed", "Verifying", "CandidateNotFound", "AnalysisFailed",
                   "ProgressDeadlineExceeded", "NoCandidate", "TrafficShifted", "TablesLeftBehind", "JobFailed",
                   "WorkloadFailed", "InsufficientData", "DatabaseUnreachable", "AdapterIncompatible",
                   "IndexNotReady", "TrainingFailed", "ModelLoadFailed", "InitialDeployment"):
        assert reason in found, f"the collector no longer finds {reason}"
    assert "batch" not in found  # kopf.on.event("batch", ...) is no reason


def test_every_reason_in_code_has_a_section() -> None:
    covered = reasons_in_troubleshooting()
    missing = {r: sorted(files) for r, files in reasons_in_code().items() if r not in covered}
    assert not missing, (f"reasons without a section in docs/troubleshooting.md: {missing}; add a heading or a table "
                         "row naming each (`Reason`) with what it means, what to check and how to fix it")


def test_every_reason_in_troubleshooting_exists() -> None:
    stale = reasons_in_troubleshooting() - set(reasons_in_code()) - NOT_LITERAL
    assert not stale, (f"docs/troubleshooting.md has sections for reasons no code uses: {sorted(stale)}; remove or "
                       "rename them (reasons that are no literal of ours go in NOT_LITERAL)")


# --------------------------------------------------------------------------------------------
# Links
# --------------------------------------------------------------------------------------------

LINK = re.compile(r"\]\(([^)\s]+)\)")
CODE = re.compile(r"^```.*?^```|`[^`\n]*`", re.S | re.M)


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    out = set()
    for line in page.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().replace("`", "").lower()
            out.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return out


@pytest.mark.parametrize("page", PAGES)
def test_relative_links_resolve(page: str) -> None:
    for target in LINK.findall(CODE.sub("", (DOCS / page).read_text())):
        if "://" in target:
            continue
        file, _, anchor = target.partition("#")
        path = DOCS / file if file else DOCS / page
        assert path.exists(), f"{page}: link to missing {file}"
        if anchor and path.suffix == ".md":
            assert anchor in anchors(path), f"{page}: no heading #{anchor} in {path.name}"
