"""The operator down (SIGKILL) while a sharded VectorIndex run moves from one step to the next.

A run with `spec.parallelism` > 1 is two Jobs: an Indexed Job of shards, then `<shard Job>-finalize`,
which the operator creates once the shard Job is Complete. The claim (docs/design-notes.md,
"Sharded runs") is that this is level-triggered: an operator that was down when the shards ended
creates the finalize Job when it comes back, from what it finds, and exactly once. Here the Job
harness (playing the Job controller and the kubelet) runs the pods to completion while the
operator is down; the operator is then started again and must finish the run as an undisturbed
one: one finalize Job, Ready once, the counts and table of a parallelism-1 run.

Two ways this used to go wrong, each with its test here:
- after the restart, the VectorIndex's resumed reconcile wrote back the phase and conditions of the
  body it was handed (Indexing) over the Ready that the finalize Job's observer had just recorded:
  the index stayed Indexing for good (whenever kopf ran the Job event first). A reconcile now
  writes only the status fields it changes (`test_a_reconcile_that_changes_nothing_writes_nothing`
  pins that without the race);
- a shard Job created just before the crash, not yet recorded in status.jobName, and Complete while
  the operator was down was never followed: its listing event came before the reconcile recorded
  it, and no event came after. The VectorIndex's own events now look at a recorded run's Job.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import kopf
import psycopg
import pytest
from kubernetes import client
from psycopg import sql

from security.conftest import DOCS, create, get, jobs, pvc, secret, vectorindex_spec, write_docs
from substrate.jobrunner import JobRunner
from substrate.kube import wait_for
from substrate.operatorproc import OperatorProcess
from tunerag_operator.api.common import GROUP, VERSION
from tunerag_operator.api.finetunejob import FineTuneJobSpec
from tunerag_operator.api.kinds import VECTORINDEX
from tunerag_operator.api.vectorindex import VectorIndexSpec
from tunerag_operator.config import OperatorConfig
from tunerag_operator.handlers import base
from tunerag_operator.handlers.finetunejob import workload_run as finetune_run
from tunerag_operator.handlers.vectorindex import INDEX_STEP, workload_run
from tunerag_operator.render.workload import Owner, WorkloadRun, config_map, finalize_name, job
from workloads import finetune_fixtures as ff

COUNTS = ("added", "updated", "deleted", "unchanged", "skipped")
SHARDS = 2


def _prepare(api: client.ApiClient, job_runner: JobRunner, namespace: str, db_uri: str) -> dict[str, Any]:
    from tunerag_workloads.index.pipeline import shard_of

    assert {shard_of(path, SHARDS) for path in DOCS} == set(range(SHARDS)), "every shard should get a document"
    secret(api, namespace, "db", {"uri": db_uri})
    pvc(api, namespace, "docs")
    write_docs(job_runner.claim_path(namespace, "docs") / "handbook")
    return vectorindex_spec(parallelism=SHARDS)


def _reference(job_runner: JobRunner, namespace: str, db_uri: str) -> dict[str, Any]:
    """A parallelism-1 run over the same documents, in this process, into table `reference`."""
    from tunerag_workloads.index import run_index

    docs = job_runner.claim_path(namespace, "docs") / "handbook"
    return run_index(vectorindex_spec(uri=f"file://{docs}", table="reference"), db_uri=db_uri)


def _job_status(api: client.ApiClient, namespace: str, name: str) -> Any:
    return client.BatchV1Api(api).read_namespaced_job(name, namespace).status


def _complete(api: client.ApiClient, namespace: str, name: str) -> bool:
    return any(c.type == "Complete" and c.status == "True" for c in _job_status(api, namespace, name).conditions or [])


def _finalize_jobs(api: client.ApiClient, namespace: str) -> list[str]:
    return sorted(j.metadata.name for j in client.BatchV1Api(api).list_namespaced_job(
        namespace, label_selector=f"{INDEX_STEP}=finalize").items)


def _phase(api: client.ApiClient, namespace: str) -> str | None:
    return (get(api, namespace, "VectorIndex", "handbook").get("status") or {}).get("phase")  # type: ignore[no-any-return]


def _indexed_events(api: client.ApiClient, namespace: str) -> int:
    events = client.CoreV1Api(api).list_namespaced_event(namespace, field_selector="involvedObject.name=handbook").items
    return sum(e.count or 1 for e in events if e.reason == "Indexed")


def _chunks(db_uri: str, table: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(db_uri) as conn:
        return conn.execute(sql.SQL("SELECT document, chunk_index, content_hash FROM {} ORDER BY 1, 2").format(
            sql.Identifier("public", table))).fetchall()


def _left_by_a_crash(api: client.ApiClient, namespace: str, run: WorkloadRun) -> str:
    """The ConfigMap and Job that `runs.start` creates for `run`, and nothing recorded on the owner:
    what an operator killed between the two leaves. Returns the Job's name."""
    client.CoreV1Api(api).create_namespaced_config_map(namespace, config_map(run))
    return str(client.BatchV1Api(api).create_namespaced_job(namespace, job(run)).metadata.name)


def _kill(operator: OperatorProcess) -> None:
    operator.stop(signal.SIGKILL)
    assert operator.proc is not None and operator.proc.poll() is not None


def _restart(operator: OperatorProcess) -> None:
    operator.start(timeout=120)


def _wait_ready_once(api: client.ApiClient, namespace: str, operator: OperatorProcess, shard_job: str,
                     reference: dict[str, Any], db_uri: str) -> None:
    """After the last restart: Ready with a parallelism-1 run's counts and table, one finalize Job
    that ran one pod, one `Indexed` Event, and nothing more a few seconds later."""
    final = f"{shard_job}-finalize"

    def ready() -> dict[str, Any] | None:
        status = get(api, namespace, "VectorIndex", "handbook").get("status") or {}
        assert status.get("phase") != "Failed", status
        return status if status.get("phase") == "Ready" else None

    status = wait_for(ready, 120, f"the VectorIndex to be Ready after the restart (finalize Jobs: "
                      f"{_finalize_jobs(api, namespace)}; operator log:\n{operator.tail(20)})", interval=0.3)
    time.sleep(3)  # time for a duplicate step, had the restart started one
    assert (status["documents"], status["chunks"], status["sourceDigest"]) == (
        len(DOCS), reference["chunks"], reference["sourceDigest"])
    assert status["lastRun"] == {k: reference[k] for k in COUNTS} == {**dict.fromkeys(COUNTS, 0), "added": len(DOCS)}
    assert status["jobName"] == shard_job and status["tableVersion"] == "handbook_v1"
    assert jobs(api, namespace) == [shard_job, final] and _finalize_jobs(api, namespace) == [final]
    finalize = _job_status(api, namespace, final)
    assert (finalize.succeeded, finalize.failed or 0) == (1, 0), finalize
    pods = client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=f"batch.kubernetes.io/job-name={final}").items
    assert len(pods) == 1, [p.metadata.name for p in pods]
    got = _chunks(db_uri, "handbook")
    assert len(got) == len({(d, i) for d, i, _ in got}) == status["chunks"]  # every chunk once
    assert got == _chunks(db_uri, "reference") and {d for d, _, _ in got} == set(DOCS)
    wait_for(lambda: _indexed_events(api, namespace), 10, "the Indexed Event")
    assert _indexed_events(api, namespace) == 1
    assert _phase(api, namespace) == "Ready"


def test_sharded_run_finalizes_once_when_the_operator_was_down_as_each_step_ended(
    operator: OperatorProcess, job_runner: JobRunner, api: client.ApiClient, namespace: str, pg_database: str,
) -> None:
    """Down while the shards end, then down again while the finalize Job runs: after each restart
    the operator acts on the state it lists (no Job changes after it is back)."""
    spec = _prepare(api, job_runner, namespace, pg_database)
    try:
        obj = create(api, namespace, "VectorIndex", "handbook", spec)
        meta = obj["metadata"]
        shard_job = "handbook-g1"
        final = finalize_name(Owner("VectorIndex", "handbook", namespace, meta["uid"], meta["generation"]), shard_job)
        assert final == "handbook-g1-finalize"

        # 1. Killed as soon as the shard Job exists and the run is recorded on the VectorIndex.
        wait_for(lambda: (get(api, namespace, "VectorIndex", "handbook").get("status") or {}).get("jobName") == shard_job
                 and shard_job in jobs(api, namespace), 60, "the shard Job and status.jobName",
                 interval=0.05)
        _kill(operator)
        assert not _complete(api, namespace, shard_job), "the shards ended before the operator was killed: no gap to test"

        # 2. The harness runs the shards to the end while the operator is down.
        reference = _reference(job_runner, namespace, pg_database)
        wait_for(lambda: _complete(api, namespace, shard_job), 300, f"the shard Job {shard_job} to be Complete (operator down)")
        shards = _job_status(api, namespace, shard_job)
        assert (shards.succeeded, shards.completed_indexes) == (SHARDS, "0-1"), shards
        assert _finalize_jobs(api, namespace) == [] and _phase(api, namespace) == "Indexing"

        # 3. Back up: it finds the Complete shard Job in its listing and creates the finalize Job;
        #    killed again as soon as that exists, before the finalize pod has ended.
        _restart(operator)
        wait_for(lambda: _finalize_jobs(api, namespace), 60,
                 f"the finalize Job {final} after the restart: the operator must act on the Complete shard Job it "
                 f"lists, not only on a change of it (operator log:\n{operator.tail(20)})", interval=0.05)
        _kill(operator)
        assert _finalize_jobs(api, namespace) == [final]
        assert _phase(api, namespace) == "Indexing", "the finalize step ended before the operator was killed: no gap to test"

        # 4. The finalize pod ends while the operator is down; back up, the run is recorded once.
        wait_for(lambda: _complete(api, namespace, final), 120, f"the finalize Job {final} to be Complete (operator down)")
        assert _phase(api, namespace) == "Indexing"
        _restart(operator)
        _wait_ready_once(api, namespace, operator, shard_job, reference, pg_database)
    finally:
        if operator.proc is None or operator.proc.poll() is not None:
            operator.start(timeout=120)


def test_sharded_run_created_just_before_a_crash_finalizes_after_the_restart(
    operator: OperatorProcess, job_runner: JobRunner, api: client.ApiClient, namespace: str, pg_database: str,
) -> None:
    """The narrowest gap: the operator dies after creating the shard Job and before recording it
    (status.jobName) on the VectorIndex, and the shards end while it is down. Built exactly, with
    the operator stopped: the VectorIndex as the API server has it, and the ConfigMap and Job that
    its reconcile renders (`runs.start`), which is what such a crash leaves."""
    spec = _prepare(api, job_runner, namespace, pg_database)
    operator.stop(signal.SIGKILL)
    try:
        obj = create(api, namespace, "VectorIndex", "handbook", spec)
        meta = obj["metadata"]
        owner = Owner("VectorIndex", "handbook", namespace, meta["uid"], meta["generation"])
        shard_job = _left_by_a_crash(api, namespace, workload_run(
            VectorIndexSpec.model_validate(obj["spec"]), owner, OperatorConfig.defaults().workloads_image))
        assert shard_job == "handbook-g1"

        reference = _reference(job_runner, namespace, pg_database)
        wait_for(lambda: _complete(api, namespace, shard_job), 300, f"the shard Job {shard_job} to be Complete (operator down)")
        assert _finalize_jobs(api, namespace) == [] and not get(api, namespace, "VectorIndex", "handbook").get("status")

        _restart(operator)
        _wait_ready_once(api, namespace, operator, shard_job, reference, pg_database)
    finally:
        if operator.proc is None or operator.proc.poll() is not None:
            operator.start(timeout=120)


def test_a_finetunejob_run_created_just_before_a_crash_is_recorded_after_the_restart(
    operator: OperatorProcess, job_runner: JobRunner, api: client.ApiClient, namespace: str, tmp_path: Path,
) -> None:
    """The same gap for a FineTuneJob (every kind that runs Jobs follows its runs the same way,
    `runs.follow`): the Job created, not recorded, and Complete while the operator is down. After
    the restart the run is recorded once: Succeeded, one AdapterVersion, one Job."""
    training = ff.base_spec(ff.cached_model(), tmp_path / "data", tmp_path / "artifacts", training={"maxSteps": 8})
    training["gates"] = {"maxRetentionRegression": 10.0}
    operator.stop(signal.SIGKILL)
    try:
        obj = create(api, namespace, "FineTuneJob", "colors-1", training)
        meta = obj["metadata"]
        owner = Owner("FineTuneJob", "colors-1", namespace, meta["uid"], meta["generation"])
        name = _left_by_a_crash(api, namespace, finetune_run(
            FineTuneJobSpec.model_validate(obj["spec"]), owner, OperatorConfig.defaults().workloads_image))
        wait_for(lambda: _complete(api, namespace, name), 300, f"the Job {name} to be Complete (operator down)")
        assert not get(api, namespace, "FineTuneJob", "colors-1").get("status")

        _restart(operator)
        status = wait_for(lambda: (s := get(api, namespace, "FineTuneJob", "colors-1").get("status") or {}).get("phase")
                          in ("Succeeded", "Rejected", "Failed") and s, 120,
                          f"the FineTuneJob to record its finished run after the restart (operator log:\n{operator.tail(20)})")
        assert status["phase"] == "Succeeded" and status["jobName"] == name and status["adapterVersion"] == "colors-v1", status
        time.sleep(3)  # time for a second registration or run, had the restart started one
        versions = client.CustomObjectsApi(api).list_namespaced_custom_object(GROUP, VERSION, namespace, "adapterversions")["items"]
        assert [v["metadata"]["name"] for v in versions] == ["colors-v1"]
        assert jobs(api, namespace) == [name]
    finally:
        if operator.proc is None or operator.proc.poll() is not None:
            operator.start(timeout=120)


def test_a_reconcile_that_changes_nothing_writes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The resumed reconcile of a recorded run leaves the status to the Job observer: its body may
    be older than the observer's write, so writing back an unchanged field would undo that write."""
    monkeypatch.setattr(kopf, "info", lambda *_, **__: None)  # Events need a running operator
    spec = {"source": {"uri": "pvc://docs/handbook"}, "store": {"connectionSecret": {"name": "db", "key": "uri"}, "table": "handbook"}}
    meta = {"name": "handbook", "namespace": "ns", "generation": 1, "uid": "0b5d7b9e-0000-4000-8000-000000000002"}
    created = kopf.Patch()
    base.reconcile(VECTORINDEX, lambda *_: [], "Pending", kopf.Body({"metadata": meta, "spec": spec}), created,
                   OperatorConfig.defaults(), act=lambda *_: {"jobName": "handbook-g1", "phase": "Indexing"})
    assert created["status"]["phase"] == "Indexing" and created["status"]["observedGeneration"] == 1
    resumed = kopf.Patch()  # after a restart, from the body recorded then (the run started, not ended)
    base.reconcile(VECTORINDEX, lambda *_: [], "Pending", kopf.Body({"metadata": meta, "spec": spec, "status": dict(created["status"])}),
                   resumed, OperatorConfig.defaults(), act=lambda *_: {})
    assert dict(resumed) == {}
