"""Real PostgreSQL and MariaDB servers from Debian's packages for tests: each started on a free
loopback port in a private temp dir, as its own OS user, and stopped by PID.

Needs root (the servers run as the `postgres` and `mysql` users) and the packages `postgresql`
and `mariadb-server`; without them the context managers skip the calling test and say why.
Both have a user that logs in over TCP with `password` (`postgres`; `backup`@127.0.0.1 for
MariaDB, whose root logs in over the socket).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

IS_ROOT = os.geteuid() == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop(proc: subprocess.Popen[bytes], sig: int) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, sig)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)


def wait_until(ready: Any, proc: subprocess.Popen[bytes], log: Path, what: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited early: {log.read_text()[-2000:]}")
        if ready():
            return
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not start: {log.read_text()[-2000:]}")


def private_dir(owner: str) -> Path:
    # Not pytest's tmp_path: it is 0700 root, and the servers run as their own users.
    d = Path(tempfile.mkdtemp(prefix=f"ba-{owner}-"))
    pw = pwd.getpwnam(owner)
    os.chown(d, pw.pw_uid, pw.pw_gid)
    return d


# --- PostgreSQL ----------------------------------------------------------------------------------

def _pg_bindir() -> str | None:
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return os.path.dirname(dirs[-1]) if dirs else None


@dataclass
class Postgres:
    bindir: str
    sockdir: Path
    port: int

    def sql(self, sql: str, db: str = "postgres") -> str:
        proc = subprocess.run([f"{self.bindir}/psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1",
                               "-h", str(self.sockdir), "-p", str(self.port), "-U", "postgres", "-d", db],
                              input=sql, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    def fingerprint(self, db: str, tables: list[str]) -> dict[str, str]:
        return {t: self.sql(f"SELECT count(*), coalesce(sum(hashtextextended(x::text, 0)), 0) FROM {t} x", db)
                for t in tables}


@contextlib.contextmanager
def postgres_server(password: str) -> Iterator[Postgres]:
    bindir = _pg_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not found (apt-get install postgresql)")
    if not IS_ROOT:
        pytest.skip("starting PostgreSQL as the postgres user needs root")
    base = private_dir("postgres")
    pwfile = base / "pw"
    pwfile.write_text(password + "\n")
    shutil.chown(pwfile, "postgres")
    subprocess.run([f"{bindir}/initdb", "-D", str(base / "data"), "-U", "postgres", "-E", "UTF8", "--locale=C",
                    "--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}", "--no-sync"],
                   user="postgres", cwd=base, check=True, capture_output=True, timeout=120)
    port = free_port()
    log = base / "server.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen([f"{bindir}/postgres", "-D", str(base / "data"), "-p", str(port), "-k", str(base),
                                 "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "full_page_writes=off",
                                 "-c", "synchronous_commit=off", "-c", "max_wal_size=2GB"],
                                user="postgres", cwd=base, stdout=fh, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)

    def ready() -> bool:
        return subprocess.run([f"{bindir}/pg_isready", "-q", "-h", str(base), "-p", str(port)]).returncode == 0

    try:
        wait_until(ready, proc, log, "postgres")
        yield Postgres(bindir, base, port)
    finally:
        stop(proc, signal.SIGINT)  # "fast" shutdown
        shutil.rmtree(base, ignore_errors=True)


# --- MariaDB -------------------------------------------------------------------------------------

@dataclass
class MariaDB:
    socket: Path
    port: int

    def sql(self, sql: str, db: str | None = None) -> str:
        argv = ["mariadb", "--no-defaults", "--default-character-set=utf8mb4", "-S", str(self.socket),
                "-u", "root", "-N", "-B", *([db] if db else [])]
        proc = subprocess.run(argv, input=sql, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    def fingerprint(self, db: str, tables: list[str]) -> dict[str, tuple[str, str]]:
        out = {}
        for t in tables:
            count = self.sql(f"SELECT count(*) FROM `{db}`.`{t}`")
            checksum = self.sql(f"CHECKSUM TABLE `{db}`.`{t}`").split("\t")[1]
            out[t] = (count, checksum)
        return out


def _sql_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


@contextlib.contextmanager
def mariadb_server(password: str) -> Iterator[MariaDB]:
    if not (shutil.which("mariadbd") or os.path.exists("/usr/sbin/mariadbd")) or not shutil.which("mariadb-install-db"):
        pytest.skip("MariaDB server binaries not found (apt-get install mariadb-server)")
    if not IS_ROOT:
        pytest.skip("starting MariaDB as the mysql user needs root")
    mariadbd = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
    base = private_dir("mysql")
    data = base / "data"
    subprocess.run(["mariadb-install-db", "--no-defaults", f"--datadir={data}", "--user=mysql",
                    "--auth-root-authentication-method=socket", "--skip-test-db", "--skip-name-resolve"],
                   check=True, capture_output=True, timeout=180)
    port = free_port()
    sock = base / "mysqld.sock"
    log = base / "error.log"
    proc = subprocess.Popen([mariadbd, "--no-defaults", f"--datadir={data}", f"--socket={sock}", f"--port={port}",
                             "--bind-address=127.0.0.1", "--user=mysql", f"--pid-file={base / 'mysqld.pid'}",
                             f"--log-error={log}", "--skip-log-bin", "--skip-name-resolve",
                             "--innodb-buffer-pool-size=64M", "--innodb-flush-log-at-trx-commit=0",
                             "--character-set-server=utf8mb4", "--innodb-buffer-pool-dump-at-shutdown=0",
                             "--innodb-buffer-pool-load-at-startup=0", "--innodb-fast-shutdown=2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    server = MariaDB(sock, port)

    def ready() -> bool:
        return subprocess.run(["mariadb", "--no-defaults", "-S", str(sock), "-u", "root", "-e", "SELECT 1"],
                              capture_output=True).returncode == 0

    try:
        log.touch()
        wait_until(ready, proc, log, "mariadbd")
        server.sql(f"CREATE USER 'backup'@'127.0.0.1' IDENTIFIED BY {_sql_string(password)};"
                   "GRANT ALL ON *.* TO 'backup'@'127.0.0.1';")
        yield server
    finally:
        stop(proc, signal.SIGTERM)
        shutil.rmtree(base, ignore_errors=True)
