"""Concurrent edits by a user and the operator: the user's read-modify-write updates (PUT with the
resourceVersion they read, as `kubectl edit` and `kubectl replace` do) meet the operator's own
writes (its finalizer, progress annotations, status), get 409 Conflicts, re-read and retry. In the
end nothing is lost on either side: every label and annotation the user set, the user's spec
change, and the operator's finalizer and a status that describes the user's last spec."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from security.conftest import DOCS, condition, create, get, jobs, pvc, secret, vectorindex_spec, write_docs
from substrate.jobrunner import JobRunner
from substrate.kube import wait_for
from substrate.operatorproc import OperatorProcess
from tunerag_operator.api.common import GROUP, VERSION

PLURAL = "vectorindexes"


class User:
    """Edits like a person with kubectl: read, change, replace; on 409 read again and redo."""

    def __init__(self, api: client.ApiClient, namespace: str, name: str) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.namespace, self.name = namespace, name
        self.conflicts = 0

    def read(self) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, self.name)  # type: ignore[no-any-return]

    def replace(self, obj: dict[str, Any]) -> None:
        self.custom.replace_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, self.name, obj)

    def edit(self, change: Any, think: float = 0.0) -> None:
        while True:
            obj = self.read()
            change(obj)
            time.sleep(think)
            try:
                self.replace(obj)
                return
            except ApiException as exc:
                if exc.status != 409:
                    raise
                self.conflicts += 1


def test_user_edits_and_operator_writes_both_survive_conflicts(
    operator: OperatorProcess, job_runner: JobRunner, api: client.ApiClient, namespace: str, pg_database: str,
) -> None:
    write_docs(job_runner.claim_path(namespace, "docs") / "handbook")
    pvc(api, namespace, "docs")
    secret(api, namespace, "db", {"uri": pg_database})
    # deletionPolicy Delete: the operator adds its finalizer (kopf: a JSON patch guarded by the
    # resourceVersion) while the user replaces the object.
    create(api, namespace, "VectorIndex", "handbook", vectorindex_spec(store={
        "connectionSecret": {"name": "db", "key": "uri"}, "table": "handbook", "deletionPolicy": "Delete"}))
    user = User(api, namespace, "handbook")

    # One conflict for certain: a copy read before the operator's first write is stale after it.
    stale = user.read()
    wait_for(lambda: user.read()["metadata"]["resourceVersion"] != stale["metadata"]["resourceVersion"], 60,
             "the operator's first write")
    stale["metadata"].setdefault("labels", {})["team"] = "search"
    try:
        user.replace(stale)
        raise AssertionError("a replace with a stale resourceVersion was accepted")
    except ApiException as exc:
        assert exc.status == 409
    user.conflicts += 1

    rng = random.Random(7)
    edits = 40
    stop = threading.Event()
    errors: list[BaseException] = []

    def label(i: int) -> Any:
        return lambda obj: obj["metadata"].setdefault("labels", {}).__setitem__(f"edit-{i}", str(i))

    def annotate() -> None:  # a second user, with merge patches (no resourceVersion: no conflicts)
        try:
            for i in range(edits):
                client.CustomObjectsApi(api).patch_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, "handbook", {"metadata": {"annotations": {f"example.com/note-{i}": "kept"}}})
                if stop.wait(0.05):
                    return
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    annotator = threading.Thread(target=annotate)
    annotator.start()
    try:
        user.edit(lambda obj: obj["metadata"].setdefault("labels", {}).update({"team": "search"}))
        for i in range(edits):
            if i == edits // 2:  # the user's spec change, in the middle of the operator's work
                user.edit(lambda obj: obj["spec"]["chunking"].update(size=48), think=rng.uniform(0, 0.2))
            user.edit(label(i), think=rng.uniform(0, 0.2))
    finally:
        stop.set()
        annotator.join()
    assert not errors, errors

    def ready_for_last_spec() -> dict[str, Any] | None:
        obj = get(api, namespace, "VectorIndex", "handbook")
        ready = condition(obj, "Ready") or {}
        assert obj.get("status", {}).get("phase") != "Failed", obj["status"]
        done = ready.get("status") == "True" and ready.get("observedGeneration") == obj["metadata"]["generation"]
        return obj if done else None

    obj = wait_for(ready_for_last_spec, 240, "the VectorIndex to be Ready for the user's last spec", interval=0.5)
    meta = obj["metadata"]
    assert user.conflicts >= 1
    assert {f"edit-{i}" for i in range(edits)} | {"team"} <= set(meta["labels"])  # every user change kept
    assert {f"example.com/note-{i}" for i in range(edits)} <= set(meta.get("annotations") or {})
    assert obj["spec"]["chunking"]["size"] == 48 and meta["generation"] == 2
    assert any(f.startswith("tunerag.dev/") for f in meta.get("finalizers") or []), meta.get("finalizers")
    status = obj["status"]
    assert status["documents"] == len(DOCS) and status["chunks"] >= len(DOCS) and status["jobName"] == "handbook-g2"
    assert (condition(obj, "Accepted") or {}).get("status") == "True"
    # one Job per generation, whatever the conflicts (the first one may have been replaced)
    assert set(jobs(api, namespace)) <= {"handbook-g1", "handbook-g2"} and "handbook-g2" in jobs(api, namespace)
    # and the user's edits did not trigger runs: labels and annotations are not the spec
    time.sleep(3)
    assert set(jobs(api, namespace)) <= {"handbook-g1", "handbook-g2"}
