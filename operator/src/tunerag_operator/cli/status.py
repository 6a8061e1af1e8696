"""`kubectl tunerag status`: one table across the four kinds."""

from __future__ import annotations

import json
import sys

import yaml

from tunerag_operator.api.kinds import ALL_KINDS
from tunerag_operator.cli.cluster import Cluster
from tunerag_operator.cli.summary import Summary, summarize
from tunerag_operator.cli.text import NONE, table

ORDER = {k.kind: i for i, k in enumerate(ALL_KINDS)}


def collect(cluster: Cluster, all_namespaces: bool) -> list[Summary]:
    objs = [o for k in ALL_KINDS for o in cluster.items(k.plural, all_namespaces)]
    summaries = [summarize(o) for o in objs]
    return sorted(summaries, key=lambda s: (ORDER[s.kind], s.namespace, s.name))


def render(summaries: list[Summary], all_namespaces: bool, output: str | None) -> str:
    if output == "json":
        return json.dumps({"items": [s.as_dict() for s in summaries]}, indent=2) + "\n"
    if output == "yaml":
        return yaml.safe_dump({"items": [s.as_dict() for s in summaries]}, sort_keys=False)
    wide = output == "wide"
    headers = ["KIND", *(["NAMESPACE"] if all_namespaces else []), "NAME", "PHASE", "PROGRESS", "DETAILS",
               *(["READY", "REASON", "MESSAGE"] if wide else [])]
    rows = []
    for s in summaries:
        ready = s.ready or {}
        rows.append([s.kind, *([s.namespace] if all_namespaces else []), s.name, s.phase or NONE, s.progress, s.details,
                     *([ready.get("status") or NONE, ready.get("reason") or NONE, ready.get("message") or NONE] if wide else [])])
    return table(headers, rows)


def run(cluster: Cluster, all_namespaces: bool, output: str | None) -> int:
    summaries = collect(cluster, all_namespaces)
    if not summaries and output not in ("json", "yaml"):
        where = "" if all_namespaces else f" in {cluster.namespace} namespace"
        print(f"No resources found{where}.", file=sys.stderr)
        return 0
    sys.stdout.write(render(summaries, all_namespaces, output))
    return 0
