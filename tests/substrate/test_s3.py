"""The S3 server of the substrate (versitygw) really speaks S3: s3fs puts, lists and gets through
SigV4 with the server's keys, reaches it through AWS_ENDPOINT_URL alone (as a workload does from
its Secret), refuses wrong keys, and keeps its objects across stop()/start()."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from substrate.s3 import S3Server


def test_put_list_get_with_s3fs(s3_server: S3Server) -> None:
    fs = s3_server.filesystem()
    prefix = f"{s3_server.bucket}/substrate-test"
    fs.pipe_file(f"{prefix}/a.txt", b"alpha")
    fs.put_file(__file__, f"{prefix}/dir/test_s3.py")
    assert sorted(fs.find(prefix)) == [f"{prefix}/a.txt", f"{prefix}/dir/test_s3.py"]
    assert fs.cat_file(f"{prefix}/a.txt") == b"alpha"
    assert fs.cat_file(f"{prefix}/dir/test_s3.py") == Path(__file__).read_bytes()
    # The objects are files in the server's POSIX folder: a test can look behind the API.
    assert (s3_server.data_dir / s3_server.bucket / "substrate-test" / "a.txt").read_bytes() == b"alpha"
    fs.rm(prefix, recursive=True)
    assert not fs.exists(f"{prefix}/a.txt")


def test_endpoint_and_keys_from_the_environment_alone(s3_server: S3Server, tmp_path: Path) -> None:
    """What a workload pod sees: only AWS_* variables (from its Secret), fsspec's plain s3:// URL."""
    s3_server.filesystem().pipe_file(f"{s3_server.bucket}/env-test/x.txt", b"from env")
    code = (f"import fsspec; fs, root = fsspec.core.url_to_fs('s3://{s3_server.bucket}/env-test/');"
            "print(fs.ls(root)); print(fs.cat_file(root + '/x.txt').decode())")
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), **s3_server.env()}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "env-test/x.txt" in out.stdout and "from env" in out.stdout

    wrong = {**env, "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    out = subprocess.run([sys.executable, "-c", code], env=wrong, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and ("SignatureDoesNotMatch" in out.stderr or "PermissionError" in out.stderr), out.stderr


def test_stop_refuses_connections_and_start_keeps_the_objects(tmp_path: Path) -> None:
    with S3Server(tmp_path / "s3") as server:
        fs = server.filesystem()
        fs.pipe_file(f"{server.bucket}/kept.txt", b"kept")
        endpoint = server.endpoint
        server.stop()
        assert server.pid is None
        with pytest.raises(Exception):  # noqa: B017  (botocore's connection error, however it is wrapped)
            server.filesystem(config_kwargs={"retries": {"max_attempts": 1}}).cat_file(f"{server.bucket}/kept.txt")
        server.start()
        assert server.endpoint == endpoint
        assert server.filesystem().cat_file(f"{server.bucket}/kept.txt") == b"kept"
