"""The feedback a schedule reads: the RolloutPolicy's exchange log, resolved to its table, database
Secret and services, and counted in PostgreSQL for the minNewSamples trigger.

The operator counts with one `SELECT count(*)` every checkInterval rather than starting a Job for
it: a count is a single cheap query, and a Job per minute per schedule would flood the namespace
with pods. The database URI is read from the Secret into memory for the query only; it never
reaches status, Events or logs, and error messages are reduced to a kind of failure.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from pydantic import ValidationError

from tunerag_operator import durations, kubeapi, references
from tunerag_operator.api.common import SecretKeyRef
from tunerag_operator.api.finetuneschedule import FeedbackSelection, FineTuneScheduleSpec
from tunerag_operator.api.kinds import ROLLOUTPOLICY, VECTORINDEX
from tunerag_operator.api.rolloutpolicy import RolloutPolicySpec
from tunerag_operator.references import Problem

CONNECT_TIMEOUT = 5


@dataclass(frozen=True)
class Source:
    """A RolloutPolicy's exchange log."""

    policy: str
    schema: str
    table: str
    secret: SecretKeyRef
    services: tuple[str, ...]  # the InferenceService and its A/B twin `<service>-b`
    stable: str | None  # the AdapterVersion serving now


class DatabaseError(Exception):
    """The exchange log could not be counted; the problem's reason and message are safe to show."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.message)
        self.reason, self.message = problem.reason, problem.message


def resolve(namespace: str, spec: FineTuneScheduleSpec) -> tuple[Source | None, list[Problem]]:
    """The policy's exchange log, or the Problems that keep the schedule from reading it."""
    name = spec.feedback.rollout_policy
    policy = kubeapi.get_custom(namespace, ROLLOUTPOLICY.plural, name)
    if policy is None:
        return None, [Problem("RolloutPolicyNotFound", f"RolloutPolicy {namespace}/{name} (spec.feedback.rolloutPolicy) "
                                                       "does not exist; create it or fix the reference.")]
    try:
        pspec = RolloutPolicySpec.model_validate(policy.get("spec") or {})
    except ValidationError:
        return None, [Problem("RolloutPolicyInvalid", f"RolloutPolicy {namespace}/{name} has an invalid spec; see its conditions.")]
    if pspec.feedback is None:
        return None, [Problem("FeedbackNotConfigured", f"RolloutPolicy {namespace}/{name} does not log its exchanges: "
                                                       "set its spec.feedback.")]
    family = spec.template.adapter.family
    if pspec.adapter_selector.family != family:
        return None, [Problem("FamilyMismatch", f"the template trains family {family}, RolloutPolicy {name} serves family "
                                                f"{pspec.adapter_selector.family}: its versions would never be rolled out.")]
    secret = pspec.feedback.connection_secret
    if secret is None and pspec.retrieval is not None:
        index = pspec.retrieval.vector_index.name
        vi = kubeapi.get_custom(namespace, VECTORINDEX.plural, index)
        if vi is None:
            return None, [Problem("VectorIndexNotFound", f"VectorIndex {namespace}/{index} (the database of RolloutPolicy "
                                                         f"{name}'s exchange log) does not exist.")]
        secret = SecretKeyRef.model_validate(vi["spec"]["store"]["connectionSecret"])
    if secret is None:
        return None, [Problem("FeedbackNotConfigured", f"RolloutPolicy {namespace}/{name} names no database for its "
                                                       "exchange log: set spec.feedback.connectionSecret or spec.retrieval.")]
    problems = references.secret_key(namespace, secret.name, secret.key, f"the database of RolloutPolicy {name}")
    service = pspec.target.inference_service
    stable = (policy.get("status") or {}).get("stable")
    return Source(name, pspec.feedback.schema_, pspec.feedback.table, secret, (service, f"{service}-b"), stable), problems


def _classify(message: str) -> str:
    text = message.lower()
    for needle, kind in (("password authentication failed", "authentication failed"), ("does not exist", "database does not exist"),
                         ("could not translate host name", "host name not resolvable"), ("refused", "connection refused"),
                         ("timeout", "connection timed out"), ("timed out", "connection timed out")):
        if needle in text:
            return kind
    return "connection failed"


def count_new(namespace: str, source: Source, selection: FeedbackSelection, watermark: str | None,
              now: dt.datetime) -> int:
    """Feedback rows matching the selection whose label arrived after the watermark. A log table
    that does not exist yet (nothing served) counts 0."""
    import psycopg
    from psycopg import sql

    uri = kubeapi.secret_value(namespace, source.secret.name, source.secret.key)
    if not uri:
        raise DatabaseError(Problem("SecretKeyNotFound", f"Secret {namespace}/{source.secret.name} has no key {source.secret.key!r}."))
    query = ("SELECT count(*) FROM {table} WHERE namespace = %(namespace)s AND service = ANY(%(services)s) "
             "AND feedback_label = ANY(%(labels)s) AND feedback_at IS NOT NULL")
    params: dict[str, object] = {"namespace": namespace, "services": list(source.services),
                                 "labels": list(selection.labels)}
    if watermark:
        query += " AND feedback_at > %(watermark)s"
        params["watermark"] = durations.parse_time(watermark)
    if selection.max_age:
        query += " AND created_at >= %(since)s"
        params["since"] = now - dt.timedelta(seconds=durations.seconds(selection.max_age))
    if selection.adapter_versions:
        query += " AND adapter_version = ANY(%(versions)s)"
        params["versions"] = list(selection.adapter_versions)
    where = f"the exchange log {source.schema}.{source.table} (Secret {source.secret.name})"
    try:
        conn = psycopg.connect(uri, connect_timeout=CONNECT_TIMEOUT, autocommit=True, application_name="tunerag-operator")
    except psycopg.OperationalError as exc:
        raise DatabaseError(Problem("DatabaseUnreachable", f"Cannot count {where}: {_classify(str(exc))}.")) from None
    except psycopg.Error:
        raise DatabaseError(Problem("DatabaseUnreachable", f"Cannot count {where}: the Secret's value is not a valid libpq URI.")) from None
    try:
        with conn:
            row = conn.execute(sql.SQL(query).format(table=sql.Identifier(source.schema, source.table)), params).fetchone()
    except psycopg.errors.UndefinedTable:
        return 0
    except psycopg.errors.InsufficientPrivilege:
        raise DatabaseError(Problem("DatabaseRefused", f"Cannot count {where}: permission denied.")) from None
    except psycopg.OperationalError as exc:
        raise DatabaseError(Problem("DatabaseUnreachable", f"Cannot count {where}: {_classify(str(exc))}.")) from None
    except psycopg.Error as exc:
        raise DatabaseError(Problem("FeedbackQueryFailed", f"Cannot count {where}: {type(exc).__name__}.")) from None
    return int(row[0]) if row else 0
