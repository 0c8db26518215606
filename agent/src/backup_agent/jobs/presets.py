"""Database presets for `command` jobs: the dump command and its restore counterpart.

`postgresql` runs `pg_dump -Fc` / `pg_restore`, `mysql` runs `mysqldump --single-transaction
--routines` / `mysql`. Connection settings reach the tools through their environment and option
files, never through argv: a password on a command line is readable by every local user in
`ps` and /proc. Secret files live in a private 0700 directory, are 0600, owned by the user the
tool runs as, and are removed when the command ends.

Deciding what to run (`check`, `dump_argv`, `restore_argv`, the escapes) is pure; only
`prepared` touches the file system.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backup_agent.errors import ConfigError

PRESETS = ("postgresql", "mysql")
# Keys that only mean something to a preset; on a plain command they would be silently unused.
PRESET_KEYS = ("database", "tables", "schemas", "host", "port", "username", "password")
# Both pg_dump and mysqldump default to a client charset that can lose 4-byte UTF-8 on some
# servers; asking for utf8mb4 explicitly makes the dump byte-faithful.
MYSQL_CHARSET = "--default-character-set=utf8mb4"


def check(raw: dict[str, Any], name: str, where: str) -> None:
    """Config rules the JSON Schema cannot say; raises one-line ConfigErrors."""
    preset = raw.get("preset")
    if preset:
        for key in ("command", "shell"):
            if key in raw:
                raise ConfigError(f"{name}: {where}.{key}: not used with preset '{preset}' "
                                  "(the preset builds the command); remove one of them")
        if preset == "mysql" and raw.get("schemas"):
            raise ConfigError(f"{name}: {where}.schemas: MySQL has no schemas inside a database; use tables")
    else:
        for key in PRESET_KEYS:
            if key in raw:
                raise ConfigError(f"{name}: {where}.{key}: only used with a preset (postgresql or mysql)")
    password = raw.get("password")
    if isinstance(password, str) and ("\n" in password or "\r" in password or "\x00" in password):
        raise ConfigError(f"{name}: {where}.password: must not contain line breaks or NUL")
    for key in ("database", "username", "host"):
        value = raw.get(key)
        if isinstance(value, str) and "\x00" in value:
            raise ConfigError(f"{name}: {where}.{key}: must not contain NUL")
    if raw.get("shell") and len(raw.get("command") or []) == 0:
        raise ConfigError(f"{name}: {where}.shell: needs 'command' (the shell command line)")


def extension(opts: dict[str, Any]) -> str:
    """The uncompressed dump's file name ending (what `restore --target DIR` writes)."""
    return {"postgresql": "pgdump", "mysql": "sql"}.get(opts.get("preset") or "", "dump")


# --- PostgreSQL ----------------------------------------------------------------------------------

def pgpass_line(password: str) -> str:
    """A .pgpass line matching any host, port, database and user: the file serves one command."""
    escaped = password.replace("\\", "\\\\").replace(":", "\\:")
    return f"*:*:*:*:{escaped}\n"


def pg_env(opts: dict[str, Any]) -> dict[str, str]:
    # libpq reads these itself; a host starting with '/' is a socket directory.
    env = {}
    for key, var in (("host", "PGHOST"), ("port", "PGPORT"), ("username", "PGUSER")):
        if opts.get(key) is not None:
            env[var] = str(opts[key])
    if opts.get("password") is not None:
        # libpq prefers PGPASSWORD to PGPASSFILE: one inherited from the agent's environment
        # would beat the configured password. Empty, it means "not set" and the file is read.
        env["PGPASSWORD"] = ""
    return env


def conninfo_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def pg_dump_argv(opts: dict[str, Any], *, we_compress: bool) -> list[str]:
    argv = ["pg_dump", "-Fc", "--no-password"]
    if we_compress:
        # Compressing twice costs CPU for nothing; with compression: none the stored object is
        # a normal pg_dump -Fc file (compressed by pg_dump) that pg_restore reads directly.
        argv.append("-Z0")
    argv += [f"--schema={s}" for s in opts.get("schemas") or []]
    argv += [f"--table={t}" for t in opts.get("tables") or []]
    # A conninfo string, so a database name that starts with '-' or holds '=' stays a name.
    argv.append(f"--dbname=dbname={conninfo_quote(opts['database'])}")
    return argv


def pg_restore_argv(into: str, *, clean: bool = False) -> list[str]:
    # One transaction: a restore that fails half-way leaves the target database as it was.
    # --clean drops each object of the dump before creating it again (--if-exists: only those
    # that are there); without it an object that exists makes the restore fail and roll back.
    return ["pg_restore", "--no-password", "--single-transaction",
            *(["--clean", "--if-exists"] if clean else []), f"--dbname=dbname={conninfo_quote(into)}"]


# Tables, views, sequences... of the user's schemas: what a restore could collide with.
PG_TABLES_SQL = ("SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                 "WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND n.nspname <> 'information_schema' "
                 "AND n.nspname NOT LIKE 'pg\\_%' ORDER BY 1")
MYSQL_TABLES_SQL = ("SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE() "
                    "ORDER BY table_name")


# --- MySQL / MariaDB -----------------------------------------------------------------------------

def mysql_option_value(value: str) -> str:
    """Quote a value for a MySQL option file (its parser undoes these escapes)."""
    escaped = (value.replace("\\", "\\\\").replace('"', '\\"').replace("\t", "\\t"))
    return f'"{escaped}"'


def mysql_defaults(password: str) -> str:
    return f"[client]\npassword={mysql_option_value(password)}\n"


def mysql_conn_args(opts: dict[str, Any]) -> list[str]:
    args = []
    host = opts.get("host")
    if host and host.startswith("/"):
        args.append(f"--socket={host}")
    elif host:
        args.append(f"--host={host}")
    if opts.get("port") is not None:
        args.append(f"--port={opts['port']}")
    if opts.get("username"):
        args.append(f"--user={opts['username']}")
    return args


def mysql_tool(preferred: str, fallback: str, path: str | None) -> str:
    # Debian's MariaDB ships mysqldump/mysql as links to mariadb-dump/mariadb; newer MariaDB
    # releases drop the old names, MySQL never had the new ones.
    if shutil.which(preferred, path=path) or not shutil.which(fallback, path=path):
        return preferred
    return fallback


def mysqldump_argv(opts: dict[str, Any], defaults_file: str | None, tool: str = "mysqldump") -> list[str]:
    # --defaults-extra-file must be the very first option or the tools ignore it.
    argv = [tool, *([f"--defaults-extra-file={defaults_file}"] if defaults_file else []),
            "--single-transaction", "--routines", MYSQL_CHARSET, *mysql_conn_args(opts)]
    # `--` so a database or table name starting with '-' is not read as an option.
    return [*argv, "--", opts["database"], *(opts.get("tables") or [])]


def mysql_restore_argv(opts: dict[str, Any], defaults_file: str | None, into: str,
                       tool: str = "mysql") -> list[str]:
    return [tool, *([f"--defaults-extra-file={defaults_file}"] if defaults_file else []),
            MYSQL_CHARSET, *mysql_conn_args(opts), f"--database={into}"]


# --- putting it together ---------------------------------------------------------------------

@dataclass
class Prepared:
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)  # added to the child's environment


def dump_argv(opts: dict[str, Any], secret: str | None, *, we_compress: bool,
              path: str | None = None) -> Prepared:
    if opts["preset"] == "postgresql":
        env = pg_env(opts)
        if secret:
            env["PGPASSFILE"] = secret
        return Prepared(pg_dump_argv(opts, we_compress=we_compress), env)
    return Prepared(mysqldump_argv(opts, secret, mysql_tool("mysqldump", "mariadb-dump", path)))


def restore_argv(opts: dict[str, Any], secret: str | None, into: str, path: str | None = None, *,
                 clean: bool = False) -> Prepared:
    if opts["preset"] == "postgresql":
        env = pg_env(opts)
        if secret:
            env["PGPASSFILE"] = secret
        return Prepared(pg_restore_argv(into, clean=clean), env)
    # A mysqldump file drops each table before creating it: `clean` is enforced by the caller,
    # which refuses a target database that has tables unless asked (tables_argv).
    return Prepared(mysql_restore_argv(opts, secret, into, mysql_tool("mysql", "mariadb", path)))


def tables_argv(opts: dict[str, Any], secret: str | None, into: str, path: str | None = None) -> Prepared:
    """A query listing the tables the target database already has, one per line."""
    if opts["preset"] == "postgresql":
        env = pg_env(opts)
        if secret:
            env["PGPASSFILE"] = secret
        return Prepared(["psql", "-X", "-q", "-A", "-t", "--no-password", "-v", "ON_ERROR_STOP=1",
                         "-c", PG_TABLES_SQL, f"--dbname=dbname={conninfo_quote(into)}"], env)
    tool = mysql_tool("mysql", "mariadb", path)
    return Prepared([tool, *([f"--defaults-extra-file={secret}"] if secret else []), MYSQL_CHARSET,
                     *mysql_conn_args(opts), "--batch", "--skip-column-names", f"--database={into}",
                     "-e", MYSQL_TABLES_SQL])


@contextmanager
def secret_file(opts: dict[str, Any], owner: tuple[int, int] | None) -> Iterator[str | None]:
    """The preset's password file (.pgpass or MySQL option file) for the time of one command."""
    password = opts.get("password")
    if not opts.get("preset") or password is None:
        yield None
        return
    text = pgpass_line(password) if opts["preset"] == "postgresql" else mysql_defaults(password)
    tmp = Path(tempfile.mkdtemp(prefix="backup-agent-"))  # 0700
    try:
        path = tmp / ("pgpass" if opts["preset"] == "postgresql" else "my.cnf")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        if owner is not None:
            # The tool runs as `user` and must read its own file; nobody else can.
            os.chown(path, *owner)
            os.chown(tmp, *owner)
        yield str(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
