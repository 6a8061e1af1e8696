"""Entry point of `kubectl-tunerag` (see tunerag_operator.cli): parses kubectl-style arguments and
runs one command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import urllib3

from tunerag_operator.cli import actions, describe, logs, plot, status
from tunerag_operator.cli.cluster import CliError, Cluster

ROLLOUT_NAMES = ("rollout", "rollouts", "rp", "rolloutpolicy", "rolloutpolicies")
ACTIONS = {
    "promote": (actions.promote, "Promote the current candidate now (annotation tunerag.dev/promote)."),
    "abort": (actions.abort, "Roll the current candidate back now (annotation tunerag.dev/abort)."),
    "pause": (actions.pause, "Hold the rollout at its current step (spec.paused: true)."),
    "resume": (actions.resume, "Unpause, and go on past an untimed pause step (annotation tunerag.dev/resume)."),
}


def _connection_flags() -> argparse.ArgumentParser:
    """kubectl's connection flags, accepted before or after the command."""
    flags = argparse.ArgumentParser(add_help=False)
    flags.add_argument("-n", "--namespace", default=argparse.SUPPRESS, help="Namespace (default: the context's).")
    flags.add_argument("--context", default=argparse.SUPPRESS, help="kubeconfig context (default: the current one).")
    flags.add_argument("--kubeconfig", default=argparse.SUPPRESS, help="Path to the kubeconfig file.")
    return flags


def parser() -> argparse.ArgumentParser:
    flags = _connection_flags()
    root = argparse.ArgumentParser(prog="kubectl tunerag", parents=[flags],
                                   description="Status, rollouts and logs of tunerag.dev resources.")
    sub = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    st = sub.add_parser("status", parents=[flags], help="One table across FineTuneJobs, AdapterVersions, VectorIndexes and RolloutPolicies.")
    st.add_argument("-A", "--all-namespaces", action="store_true", help="List across all namespaces.")
    st.add_argument("-o", "--output", choices=("wide", "json", "yaml"), help="wide adds the Ready condition; json|yaml print the summaries.")
    de = sub.add_parser("describe", parents=[flags], help="Describe a RolloutPolicy: steps, analysis runs, history, events.")
    de.add_argument("resource", metavar="rollout", help="rollout (or rp), optionally as rollout/NAME.")
    de.add_argument("name", nargs="?")
    de.add_argument("--plot", metavar="FILE", help="Also write the analysis history (weight and metrics over time, "
                                                   "with the passing ranges) to FILE as a self-contained HTML page.")
    for verb, (_, text) in ACTIONS.items():
        sub.add_parser(verb, parents=[flags], help=text, description=text).add_argument("policy", help="RolloutPolicy name.")
    lg = sub.add_parser("logs", parents=[flags], help="Logs of the pod of a FineTuneJob's or VectorIndex's current Job "
                                                  "(of a sharded VectorIndex: each shard's and the finalize pod, prefixed).")
    lg.add_argument("resource", metavar="ftj|vidx", help="ftj or vidx (long names too), optionally as KIND/NAME.")
    lg.add_argument("name", nargs="?")
    lg.add_argument("-f", "--follow", action="store_true", help="Stream the log until the container exits (all pods at once).")
    lg.add_argument("--tail", type=int, default=-1, help="Lines of recent log to show, per pod (-1: all).")
    lg.add_argument("-c", "--container", help="Container (default: the pod's only one).")
    return root


def _kind_and_name(resource: str, name: str | None, kinds: Sequence[str], what: str) -> tuple[str, str]:
    kind, _, inline = resource.partition("/")
    if kind.lower() not in kinds:
        raise CliError(f'error: resource type "{kind}" is not one this command takes; use one of: {", ".join(kinds)}')
    if bool(inline) == bool(name):
        raise CliError(f"error: name {what} exactly once, as `{kind} NAME` or `{kind}/NAME`")
    return kind.lower(), inline or name or ""


def dispatch(args: argparse.Namespace) -> int:
    # Arguments are checked before connecting, so a typo is reported as such.
    kind = name = ""
    if args.command == "describe":
        _, name = _kind_and_name(args.resource, args.name, ROLLOUT_NAMES, "one RolloutPolicy")
    elif args.command == "logs":
        kind, name = _kind_and_name(args.resource, args.name, tuple(logs.PLURALS), "one resource")
    cluster = Cluster(getattr(args, "kubeconfig", None), getattr(args, "context", None), getattr(args, "namespace", None))
    if args.command == "status":
        return status.run(cluster, args.all_namespaces, args.output)
    if args.command == "describe":
        obj = cluster.get("rolloutpolicies", name)
        sys.stdout.write(describe.render(obj, cluster.events(obj)))
        if args.plot:  # from the same read as the text
            try:
                Path(args.plot).write_text(plot.render(obj))
            except OSError as exc:
                raise CliError(f"error: cannot write {args.plot}: {exc.strerror or exc}") from exc
            print(f"Plot written to {args.plot}", file=sys.stderr)
        return 0
    if args.command == "logs":
        return logs.run(cluster, kind, name, args.follow, args.tail, args.container)
    sys.stdout.write(ACTIONS[args.command][0](cluster, args.policy))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return dispatch(args)
    except CliError as exc:
        print(exc, file=sys.stderr)
    except urllib3.exceptions.HTTPError as exc:
        print(f"Unable to connect to the server: {exc}", file=sys.stderr)
    except BrokenPipeError:  # `| head`
        sys.stderr.close()
    return 1


if __name__ == "__main__":
    sys.exit(main())
