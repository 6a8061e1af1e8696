"""Secrets never leak: real pipelines with a unique marker as the password (and as artifact-store
credentials), succeeding and failing in every way a connection can fail, then a search for the
marker everywhere the system writes: every object in the namespace (Secrets aside), all Events,
all ConfigMaps, the operator's log, the pods' logs (files and through the API), the run folders
the Job harness made (spec, termination message, working directory), the artifact store and its
reports, and the database's tables."""

from __future__ import annotations

import base64
import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import psycopg
from kubernetes import client
from psycopg import sql

from security.conftest import (
    condition,
    create,
    get,
    pvc,
    secret,
    vectorindex_spec,
    wait_for,
    write_docs,
)
from substrate.controlplane import ControlPlane, free_port
from substrate.jobrunner import JobRunner
from substrate.operatorproc import OperatorProcess
from substrate.postgres import Postgres
from workloads import finetune_fixtures as ff

FINISHED = ("Ready", "Failed", "Succeeded", "Rejected")


def _finished(api: client.ApiClient, namespace: str, kind: str, names: list[str], timeout: float) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        objs = {n: get(api, namespace, kind, n) for n in names}
        return objs if all((o.get("status") or {}).get("phase") in FINISHED for o in objs.values()) else None

    return wait_for(done, timeout, f"{kind}s {names} to finish", interval=0.5)


def _role(postgres: Postgres, database_uri: str, user: str, password: str) -> None:
    """A login role that owns the test's database (so it may create tables), with vector installed."""
    database = database_uri.rsplit("/", 1)[1]
    with psycopg.connect(postgres.uri, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(user), sql.Literal(password)))
        conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(database), sql.Identifier(user)))
    with psycopg.connect(database_uri, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")


def _files_containing(root: Path, needles: list[bytes]) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            found += [f"{path}: {needle!r}" for needle in needles if needle in data]
    return found


def _namespace_dump(kubeconfig: Path, namespace: str) -> str:
    """Every namespaced object that can be listed, Secrets aside, as JSON (kubectl discovers the
    resource types, so a kind added later is searched too)."""
    kubectl = ["kubectl", "--kubeconfig", str(kubeconfig)]
    kinds = subprocess.run([*kubectl, "api-resources", "--namespaced", "--verbs=list", "-o", "name"],
                           check=True, capture_output=True, text=True).stdout.split()
    kinds = [k for k in kinds if k != "secrets"]
    assert {"events", "configmaps", "pods", "jobs.batch", "vectorindexes.tunerag.dev"} <= set(kinds)
    return subprocess.run([*kubectl, "get", ",".join(kinds), "-n", namespace, "-o", "json"],
                          check=True, capture_output=True, text=True).stdout


def test_no_marker_anywhere_after_good_and_failing_runs(
    control_plane: ControlPlane, operator: OperatorProcess, job_runner: JobRunner, api: client.ApiClient,
    namespace: str, postgres: Postgres, pg_database: str, tmp_path: Path,
) -> None:
    marker = f"Mk{uuid.uuid4().hex}"
    user = f"indexer_{uuid.uuid4().hex[:8]}"
    _role(postgres, pg_database, user, marker)
    host = f"127.0.0.1:{postgres.port}"
    database = pg_database.rsplit("/", 1)[1]
    uris = {
        "good": f"postgresql://{user}:{marker}@{host}/{database}",
        "wrong-database": f"postgresql://{user}:{marker}@{host}/no_such_database",
        "wrong-user": f"postgresql://nobody_{user}:{marker}@{host}/{database}",
        "dead-port": f"postgresql://{user}:{marker}@127.0.0.1:{free_port()}/{database}",
        "bad-port": f"postgresql://{user}:{marker}@127.0.0.1:notaport/{database}",
        "not-a-uri": f"host=127.0.0.1 password={marker} port=",
    }
    pvc(api, namespace, "docs")
    write_docs(job_runner.claim_path(namespace, "docs") / "handbook")
    for case, uri in uris.items():
        secret(api, namespace, f"db-{case}", {"uri": uri})
        spec = vectorindex_spec(table=case.replace("-", "_"))
        spec["store"]["connectionSecret"]["name"] = f"db-{case}"
        create(api, namespace, "VectorIndex", case, spec)

    # The artifact store's credentials are a Secret too: its keys become the training pod's env.
    secret(api, namespace, "store-credentials", {"AWS_SECRET_ACCESS_KEY": marker, "TUNERAG_EXTRA": f"x{marker}"})
    out = tmp_path / "artifacts"
    good = ff.base_spec(ff.cached_model(), tmp_path / "data", out, training={"maxSteps": 4, "checkpointInterval": 2},
                        output={"credentialsSecret": "store-credentials"})
    good["gates"] = {"maxRetentionRegression": 10.0}
    create(api, namespace, "FineTuneJob", "trains", good)
    too_little = ff.deep_merge(good, {"dataset": {"rules": {"minRows": 100_000}}, "adapter": {"family": "starved"}})
    create(api, namespace, "FineTuneJob", "starved", too_little)

    indexes = _finished(api, namespace, "VectorIndex", list(uris), timeout=300)
    runs = _finished(api, namespace, "FineTuneJob", ["trains", "starved"], timeout=420)

    # The runs went the ways they were meant to.
    phases = {name: obj["status"]["phase"] for name, obj in {**indexes, **runs}.items()}
    assert phases == {"good": "Ready", "wrong-database": "Failed", "wrong-user": "Failed", "dead-port": "Failed",
                      "bad-port": "Failed", "not-a-uri": "Failed", "trains": "Succeeded", "starved": "Failed"}, phases
    reasons = {name: condition(obj, "Ready")["reason"] for name, obj in indexes.items()}  # type: ignore[index]
    assert {reasons[c] for c in ("wrong-database", "wrong-user", "dead-port")} == {"DatabaseUnreachable"}, reasons
    assert condition(runs["starved"], "Ready")["reason"] == "InsufficientData"  # type: ignore[index]

    needles = [marker, base64.b64encode(uris["good"].encode()).decode(), base64.b64encode(marker.encode()).decode()[:-4]]
    leaks: list[str] = []

    # Control: the search finds the marker where it belongs, in its Secret.
    stored = client.CoreV1Api(api).read_namespaced_secret("db-good", namespace).data["uri"]
    assert needles[1] == stored and marker in base64.b64decode(stored).decode()

    dump = _namespace_dump(control_plane.kubeconfig, namespace)
    assert '"kind": "Event"' in dump and "DatabaseUnreachable" in dump and '"kind": "Secret"' not in dump
    leaks += [f"namespace objects: {n[:12]}..." for n in needles if n in dump]

    events = client.CoreV1Api(api).list_namespaced_event(namespace).items
    assert len(events) >= len(uris)
    leaks += [f"event {e.reason}" for e in events if any(n in (e.message or "") for n in needles)]

    leaks += [f"operator log: {n[:12]}..." for n in needles if n in operator.log_path.read_text(errors="replace")]

    core = client.CoreV1Api(api)
    pods = core.list_namespaced_pod(namespace).items
    assert len(pods) >= len(uris) + 2
    for pod in pods:
        log = core.read_namespaced_pod_log(pod.metadata.name, namespace, _preload_content=False).data.decode(errors="replace")
        leaks += [f"pod log (API) {pod.metadata.name}" for n in needles if n in log]
        log_file = job_runner.log_path(namespace, pod.metadata.name)
        assert log_file.exists()
        leaks += [f"pod log file {pod.metadata.name}" for n in needles if n in log_file.read_text(errors="replace")]

    encoded = [n.encode() for n in needles]
    leaks += _files_containing(job_runner.workdir / "pods" / namespace, encoded)  # spec, termination message, work dirs
    reports = list(out.rglob("*.json")) + list(out.rglob("README.md"))
    assert any(p.name == "report.json" for p in reports) and any(p.name == "data-report.json" for p in reports)
    leaks += _files_containing(out, encoded)

    with psycopg.connect(pg_database) as conn:
        tables = conn.execute("SELECT schemaname, tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
        assert {t for _, t in tables} >= {"good_v1", "good_versions", "good_documents"}, tables
        for schema, table in tables:
            hits = conn.execute(sql.SQL("SELECT count(*) FROM {} t WHERE t::text LIKE %s").format(
                sql.Identifier(schema, table)), (f"%{marker}%",)).fetchone()
            if hits and hits[0]:
                leaks.append(f"table {schema}.{table}")

    assert not leaks, leaks
    # The marker really was used: the good run connected with it.
    assert json.dumps(indexes["good"]["status"]).count("Indexed 2 documents") == 1
