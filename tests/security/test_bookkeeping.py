"""The operator's own bookkeeping never costs the user their status.

kopf keeps a diff base and handler progress per object. Kept in annotations (as before), the diff
base copied every annotation: a resource whose annotations were near the API server's limit
(`kubectl apply`'s last-applied-configuration alone holds the whole manifest) was pushed past it,
every patch was refused with 422, and the resource never got a status. And when the API server
refuses the operator's write for any reason, the resource says so.
"""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from security.conftest import PLURAL, condition, get, manifest, pvc, secret, vectorindex_spec, wait_condition
from substrate.kube import wait_for
from substrate.operatorproc import OperatorProcess
from tunerag_operator.api.common import GROUP, VERSION

pytestmark = pytest.mark.cluster

# The API server's limit on all of an object's annotations together: keys and values, in bytes.
ANNOTATIONS_LIMIT = 256 * 1024


def _at_the_limit() -> dict[str, str]:
    key = "gitops.example.com/rendered"
    return {key: "x" * (ANNOTATIONS_LIMIT - len(key))}


def _warnings(api: client.ApiClient, namespace: str, name: str, reason: str) -> list[Any]:
    events = client.CoreV1Api(api).list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}").items
    return [e for e in events if e.reason == reason and e.type == "Warning"]


def test_annotations_at_the_limit_still_get_a_status(operator: OperatorProcess, api: client.ApiClient, namespace: str) -> None:
    """A VectorIndex whose own annotations fill the budget exactly: the operator's retries (a
    missing Secret) and its acceptance both reach the status, and the annotations stay the
    user's alone."""
    body = manifest("VectorIndex", "full", vectorindex_spec())
    body["metadata"]["annotations"] = _at_the_limit()
    custom = client.CustomObjectsApi(api)
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL["VectorIndex"], body)

    cond = wait_condition(api, namespace, "VectorIndex", "full", "Accepted", "False", reason="SecretNotFound")
    assert "db" in cond["message"]
    # Retries keep their progress somewhere: not in the annotations.
    assert get(api, namespace, "VectorIndex", "full")["metadata"]["annotations"] == _at_the_limit()

    secret(api, namespace, "db", {"uri": "postgresql://user:pw@127.0.0.1:1/none"})
    pvc(api, namespace, "docs")
    wait_condition(api, namespace, "VectorIndex", "full", "Accepted", "True")
    obj = get(api, namespace, "VectorIndex", "full")
    assert obj["metadata"]["annotations"] == _at_the_limit()
    assert obj["status"]["kopf"]["lastHandledConfiguration"]  # the diff base, in status
    assert (obj["status"].get("jobName") or "").startswith("full-"), obj["status"]


def test_an_upgrade_moves_the_old_diff_base_out_of_the_annotations(
    operator: OperatorProcess, api: client.ApiClient, namespace: str
) -> None:
    """An object last handled by an operator that kept its diff base in an annotation: the
    annotation is removed once the reconcile of the spec change it shows has run."""
    old = f"{GROUP}/last-handled-configuration"
    secret(api, namespace, "db", {"uri": "postgresql://user:pw@127.0.0.1:1/none"})
    pvc(api, namespace, "docs")
    body = manifest("VectorIndex", "upgraded", vectorindex_spec())
    body["metadata"]["annotations"] = {old: '{"spec":{"source":{"uri":"pvc://docs/old"}}}', "team": "search"}
    client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL["VectorIndex"], body)

    wait_condition(api, namespace, "VectorIndex", "upgraded", "Accepted", "True")
    annotations = wait_for(
        lambda: (a := get(api, namespace, "VectorIndex", "upgraded")["metadata"].get("annotations") or {}) and old not in a and a,
        30, "the old diff-base annotation to be removed")
    assert annotations == {"team": "search"}


def _refuse_status_writes(api: client.ApiClient, namespace: str) -> tuple[str, str]:
    """A ValidatingAdmissionPolicy (the API server's own CEL admission) that refuses every write
    of a VectorIndex's status in `namespace`, as an organisation's policy might."""
    admission = client.AdmissionregistrationV1Api(api)
    name = f"freeze-{namespace}"[:63]
    admission.create_validating_admission_policy({
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{
                "apiGroups": [GROUP], "apiVersions": ["*"], "operations": ["UPDATE"],
                "resources": ["vectorindexes/status"]}]},
            "validations": [{"expression": "false", "reason": "Invalid",
                             "message": "status writes are frozen in this namespace"}],
        },
    })
    admission.create_validating_admission_policy_binding({
        "metadata": {"name": name},
        "spec": {"policyName": name, "validationActions": ["Deny"],
                 "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}}},
    })
    return name, name


def test_a_refused_status_write_is_said_on_the_resource(
    operator: OperatorProcess, api: client.ApiClient, namespace: str
) -> None:
    policy, binding = _refuse_status_writes(api, namespace)
    admission = client.AdmissionregistrationV1Api(api)
    custom = client.CustomObjectsApi(api)
    try:
        # The policy is in force once a status write of our own is refused.
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL["VectorIndex"],
                                               manifest("VectorIndex", "probe", vectorindex_spec()))

        def refused() -> bool:
            try:
                custom.patch_namespaced_custom_object_status(
                    GROUP, VERSION, namespace, PLURAL["VectorIndex"], "probe", {"status": {"phase": "Pending"}})
            except ApiException as exc:
                return exc.status == 422
            return False

        wait_for(refused, 30, "the admission policy to be in force", interval=0.5)
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL["VectorIndex"],
                                               manifest("VectorIndex", "frozen", vectorindex_spec()))
        [event] = wait_for(lambda: _warnings(api, namespace, "frozen", "WriteRefused"), 60, "a WriteRefused Event")
        assert "status writes are frozen in this namespace" in event.message, event.message
        assert "refused the operator's write of this VectorIndex (422)" in event.message, event.message
        assert not (get(api, namespace, "VectorIndex", "frozen").get("status") or {}).get("conditions")
        # kopf keeps retrying the same refusal: it is said once, not once per retry.
        wait_for(lambda: operator.log_path.read_text(errors="replace").count("frozen in this namespace") >= 3, 60, "two more refused retries")
        assert len(_warnings(api, namespace, "frozen", "WriteRefused")) == 1
    finally:
        admission.delete_validating_admission_policy_binding(binding)
        admission.delete_validating_admission_policy(policy)
    # The user acts on the Event (here: the policy is lifted, and the resource annotated as
    # such); the next change of the resource is handled and its status arrives.
    wait_for(lambda: not refused(), 30, "the admission policy to be lifted", interval=0.5)
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL["VectorIndex"], "frozen",
                                          {"metadata": {"annotations": {"policy.example.com/lifted": "yes"}}})
    wait_condition(api, namespace, "VectorIndex", "frozen", "Accepted", "False", reason="SecretNotFound", timeout=60)
    assert condition(get(api, namespace, "VectorIndex", "frozen"), "Ready") is not None
