"""Verifies a registered adapter artifact, and its merged, quantized model when it has one: each
exists and its content has the recorded sha256.

    python -m tunerag_workloads.finetune.verify spec.json    # spec: an AdapterVersion spec

The digest is the one `publish.build_manifest` records (sha256 over the sorted `sha256sum` lines of
the folder's files, the manifest itself excluded), so `sha256sum * | sort -k2 | sha256sum` made by
hand for an adapter trained elsewhere gives the same value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunerag_workloads.contract import WorkloadError, resolve_uri, run
from tunerag_workloads.finetune.publish import build_manifest


def verify_folder(artifact: dict[str, Any], what: str) -> dict[str, Any]:
    """The folder's manifest, once it is found to have the recorded sha256; `what` names it in errors."""
    uri, expected = str(artifact.get("uri", "")), str(artifact.get("sha256", ""))
    folder = Path(resolve_uri(uri))
    if "://" in str(folder):
        raise WorkloadError("UnsupportedArtifactStore", f"verification reads pvc:// and file:// artifacts; {what} {uri} is neither")
    if not folder.is_dir() or not any(p.is_file() for p in folder.iterdir()):
        raise WorkloadError("ArtifactNotFound", f"{what} {uri} does not exist or is empty")
    manifest = build_manifest(folder)
    if manifest["sha256"] != expected:
        raise WorkloadError("ChecksumMismatch", f"{what} {uri} has sha256 {manifest['sha256']}, "
                                                f"the AdapterVersion records {expected}: it was changed or registered wrongly")
    return manifest


def verify_main(request: dict[str, Any]) -> dict[str, Any]:
    spec = request.get("spec") or {}
    manifest = verify_folder(spec.get("artifact") or {}, "the artifact")
    result = {"sha256": manifest["sha256"], "sizeBytes": manifest["sizeBytes"], "files": len(manifest["files"])}
    if spec.get("quantized"):
        q = verify_folder(spec["quantized"], "the quantized model (spec.quantized)")
        result["quantized"] = {"sha256": q["sha256"], "sizeBytes": q["sizeBytes"], "files": len(q["files"])}
    return result


if __name__ == "__main__":
    run(verify_main)
