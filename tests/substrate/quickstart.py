"""The quick start: a local control plane, the CRDs, the operator, the examples, their statuses.

    python -m substrate.quickstart [--keep]

With --keep it stays up (Ctrl-C stops it) and prints how to point kubectl at it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from kubernetes import config

from substrate import kube
from substrate.controlplane import ControlPlane
from substrate.operatorproc import OperatorProcess

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = "tunerag-demo"


def stage(name: str) -> None:
    print(f"==> {name}", flush=True)


def kubectl(cp: ControlPlane, *args: str) -> str:
    out = subprocess.run(["kubectl", "--kubeconfig", str(cp.kubeconfig), *args], check=True, capture_output=True, text=True)
    return out.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", action="store_true", help="keep everything running until Ctrl-C")
    parser.add_argument("--workdir", type=Path, default=ROOT / ".local" / "quickstart")
    args = parser.parse_args(argv)
    bin_dir = os.environ.get("TUNERAG_CONTROLPLANE_BIN")
    cp = ControlPlane(args.workdir / "controlplane", bin_dir=Path(bin_dir) if bin_dir else None)
    op = OperatorProcess(cp.kubeconfig, args.workdir / "operator.log")
    current = "control plane"
    try:
        stage("starting the local control plane (etcd + kube-apiserver)")
        t0 = time.monotonic()
        cp.start()
        print(f"    up in {time.monotonic() - t0:.1f}s at {cp.url}")
        current = "CRDs"
        stage("installing the tunerag and KServe CRDs")
        kube.install_crds(config.new_client_from_config(str(cp.kubeconfig)), kube.crd_documents())
        current = "operator"
        stage("starting the operator")
        op.start()
        current = "examples"
        stage(f"applying examples/ in namespace {NAMESPACE}")
        kubectl(cp, "create", "namespace", NAMESPACE)
        print(kubectl(cp, "-n", NAMESPACE, "apply", "-f", str(ROOT / "examples")), end="")
        stage("waiting for every resource to get a status")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            phases = kubectl(cp, "-n", NAMESPACE, "get", "tunerag", "-o", "jsonpath={range .items[*]}{.status.phase}{\"\\n\"}{end}")
            if phases.count("\n") >= 4 and "\n\n" not in "\n" + phases:
                break
            time.sleep(0.5)
        print(kubectl(cp, "-n", NAMESPACE, "get", "tunerag"), end="")
        stage("conditions")
        print(kubectl(cp, "-n", NAMESPACE, "get", "tunerag", "-o",
                      "custom-columns=KIND:.kind,NAME:.metadata.name,ACCEPTED:.status.conditions[?(@.type=='Accepted')].reason,"
                      "READY:.status.conditions[?(@.type=='Ready')].message"), end="")
        if args.keep:
            print(f"\nRunning. In another shell: export KUBECONFIG={cp.kubeconfig}\nCtrl-C stops everything.")
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    time.sleep(3600)
        return 0
    except Exception as exc:
        print(f"\nFAILED at stage '{current}': {exc}", file=sys.stderr)
        print(f"logs: {cp.workdir}/*.log, {op.log_path}", file=sys.stderr)
        return 1
    finally:
        op.stop()
        cp.stop()


if __name__ == "__main__":
    sys.exit(main())
