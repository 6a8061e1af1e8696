"""The artifact store's retry of a publication (`storage.retrying`) against the real S3 server,
stopped and started: a short outage is ridden out with back-off, a long one ends as a retryable
ArtifactStoreUnreachable (exit code 3 under the contract: the Job's next pod takes over)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import s3fs

from substrate.s3 import S3Server
from tunerag_workloads.contract import WorkloadError
from tunerag_workloads.finetune import storage


@pytest.fixture
def s3(tmp_path: Path) -> S3Server:  # its own server: these tests stop it
    return S3Server(tmp_path / "s3")


def _store(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> storage.Store:
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore's own retries would hide the back-off
    s3fs.S3FileSystem.clear_instance_cache()  # fsspec caches filesystems, not the env they were made from
    return storage.Store(f"s3://{s3.bucket}/adapters")


def test_a_short_outage_is_retried_and_the_object_lands_once(s3: S3Server, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    with s3:
        store = _store(s3, monkeypatch)
        s3.stop()
        threading.Timer(3.0, s3.start).start()
        storage.retrying("write the report", lambda: store.fs.pipe_file(store.path("r.json"), b'{"ok": 1}'), base=0.5, budget=60)
        assert store.fs.cat_file(store.path("r.json")) == b'{"ok": 1}'
    events = [json.loads(line.split(" ", 1)[1]) for line in capsys.readouterr().out.splitlines() if line.startswith("TUNERAG_PROGRESS ")]
    retries = [e for e in events if e.get("event") == "storeRetry"]
    assert retries and all(e["what"] == "write the report" for e in retries)
    assert [e["attempt"] for e in retries] == list(range(1, len(retries) + 1))
    assert events[-1]["event"] == "storeRecovered" and events[-1]["attempts"] == len(retries) + 1


def test_an_outage_past_the_budget_is_a_retryable_failure(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    with s3:
        store = _store(s3, monkeypatch)
        s3.stop()
        with pytest.raises(WorkloadError) as failed:
            storage.retrying("upload the adapter", lambda: store.fs.pipe_file(store.path("a.bin"), b"x"), base=0.2, budget=2)
    assert failed.value.retryable and failed.value.reason == "ArtifactStoreUnreachable"
    assert failed.value.message.startswith("the artifact store failed to upload the adapter")
    assert s3.secret_key not in failed.value.message
