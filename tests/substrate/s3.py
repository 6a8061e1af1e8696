"""A real S3-compatible server on loopback: versitygw (github.com/versity/versitygw), an S3 gateway
over a POSIX folder, built from pinned Go modules by `build-s3.sh` (cached outside the clone).

    with S3Server(workdir) as s3:       # starts, waits for its health endpoint, creates the bucket
        s3.env()                        # AWS_* variables a client (or a workload's Secret) needs
        s3.filesystem().ls(s3.bucket)   # an s3fs filesystem talking to it
        s3.stop(); s3.start()           # same port, same data: an outage of the artifact store

Nothing is mocked: clients sign requests with SigV4 against the gateway's root account, and the
objects are files under `workdir/data/<bucket>/` (metadata in a sidecar folder, so the filesystem
needs no extended attributes).
"""

from __future__ import annotations

import atexit
import os
import secrets
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from substrate.controlplane import free_port

HERE = Path(__file__).resolve().parent
HEALTH = "/health"


def find_binary() -> Path:
    """versitygw: `$TUNERAG_S3_BIN` (printed by .ci/setup), else built (or found cached) by build-s3.sh."""
    if found := os.environ.get("TUNERAG_S3_BIN"):
        return Path(found)
    out = subprocess.run([str(HERE / "build-s3.sh")], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


class S3Server:
    """versitygw as a child process serving `workdir/data` on 127.0.0.1, with one bucket and a
    root account whose keys are generated per instance. `stop()` keeps port, keys and objects, so
    a later `start()` serves the same endpoint with the same contents."""

    def __init__(self, workdir: Path, bucket: str = "tunerag", region: str = "us-east-1") -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.bucket = bucket
        self.region = region
        self.access_key = f"TUNERAG{secrets.token_hex(6).upper()}"
        self.secret_key = secrets.token_urlsafe(30)
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        atexit.register(self.stop)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def data_dir(self) -> Path:
        """The POSIX folder behind the gateway: `data_dir/<bucket>/<key>` are the objects."""
        return self.workdir / "data"

    @property
    def log_path(self) -> Path:
        return self.workdir / "versitygw.log"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def env(self) -> dict[str, str]:
        """What an S3 client needs, as environment: the keys, the region and the endpoint
        (botocore reads AWS_ENDPOINT_URL, so s3fs and boto3 reach this server without code)."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_DEFAULT_REGION": self.region, "AWS_ENDPOINT_URL": self.endpoint}

    def filesystem(self, **kwargs: Any) -> Any:
        """A fresh s3fs filesystem for this server (no instance cache: a stopped server is seen)."""
        import s3fs

        return s3fs.S3FileSystem(key=self.access_key, secret=self.secret_key, endpoint_url=self.endpoint,
                                 client_kwargs={"region_name": self.region}, skip_instance_cache=True,
                                 use_listings_cache=False, **kwargs)

    def uri(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{key.lstrip('/')}"

    def __enter__(self) -> S3Server:
        self.start()
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def start(self, timeout: float = 30.0) -> None:
        """Starts the gateway (on the previous port, if any), waits for its health endpoint and
        creates the bucket when it is missing."""
        if self.pid is not None:
            return
        self.port = self.port or free_port()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "meta").mkdir(exist_ok=True)
        argv = [str(find_binary()), "--port", f"127.0.0.1:{self.port}", "--region", self.region,
                "--health", HEALTH, "posix", "--sidecar", str(self.workdir / "meta"), str(self.data_dir)]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
               "ROOT_ACCESS_KEY_ID": self.access_key, "ROOT_SECRET_ACCESS_KEY": self.secret_key}
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          cwd=self.workdir, env=env, start_new_session=True)
        self.wait_ready(timeout)
        self._create_bucket()

    def _create_bucket(self) -> None:
        """CreateBucket unless it exists (botocore directly: s3fs would send us-east-1 as a
        LocationConstraint, which S3 refuses)."""
        import botocore.session
        from botocore.exceptions import ClientError

        s3 = botocore.session.get_session().create_client(
            "s3", endpoint_url=self.endpoint, region_name=self.region,
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key)
        try:
            s3.create_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise
        finally:
            s3.close()

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"versitygw exited with {self._proc.returncode}; see {self.log_path}:\n"
                                   + self.log_path.read_text()[-2000:])
            try:
                with urllib.request.urlopen(self.endpoint + HEALTH, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"versitygw not healthy at {self.endpoint} after {timeout}s; see {self.log_path}")
            time.sleep(0.1)

    def stop(self, timeout: float = 10.0) -> None:
        """Stops the gateway (SIGTERM, SIGKILL to its group if it lingers): connections are refused
        until `start()`."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
