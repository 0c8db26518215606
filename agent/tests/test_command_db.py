"""Database presets against real servers from Debian (PostgreSQL 15, MariaDB), started once per
module by tests/support/databases.py (which skips, saying why, without root or the packages)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.databases import MariaDB, Postgres, mariadb_server, postgres_server

# Characters each secret-file format must escape: ':' and '\' (.pgpass), '"', '#', '\' (my.cnf).
PASSWORD = "b4ck:up\"#p\\ss w'rd"


def assert_nothing_left(agent: Any, job: str) -> None:
    assert agent.object_keys(f"test-node/{job}/") == []
    assert agent.s3.list_multipart_uploads(Bucket=agent.bucket).get("Uploads", []) == []


def run_ok(agent: Any, *args: str) -> subprocess.CompletedProcess[str]:
    proc = agent.run(*args)
    assert proc.returncode == 0, proc.stderr
    assert PASSWORD not in proc.stderr + proc.stdout
    return proc


# --- PostgreSQL ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pg() -> Iterator[Postgres]:
    with postgres_server(PASSWORD) as server:
        server.sql("CREATE DATABASE app")
        # ~110 MB of dump text, made by the server itself in a few seconds.
        server.sql("""
            CREATE TABLE big (id bigint PRIMARY KEY, grp int NOT NULL, payload text NOT NULL,
                              created timestamptz NOT NULL);
            INSERT INTO big SELECT i, i % 1000, repeat(md5(i::text), 3),
                                   '2020-01-01'::timestamptz + i * interval '1 second'
                            FROM generate_series(1, 850000) i;
            CREATE TABLE small (id int PRIMARY KEY, name text, note text);
            INSERT INTO small SELECT i, 'name ' || i, CASE WHEN i % 7 = 0 THEN NULL ELSE 'ünïcødé ☃ ' || i END
                              FROM generate_series(1, 500) i;
            CREATE SCHEMA sales;
            CREATE TABLE sales.orders (id serial PRIMARY KEY, small_id int REFERENCES small(id),
                                       amount numeric(12, 2));
            INSERT INTO sales.orders (small_id, amount) SELECT 1 + i % 500, i * 1.25 FROM generate_series(1, 20000) i;
            CREATE VIEW sales.totals AS SELECT small_id, sum(amount) AS total FROM sales.orders GROUP BY 1;
        """, "app")
        yield server


TABLES = ["public.big", "public.small", "sales.orders", "sales.totals"]


def test_postgresql_dump_and_restore_into_a_fresh_database(agent: Any, pg: Postgres) -> None:
    agent.job("pg", type="command", preset="postgresql", database="app", host="127.0.0.1", port=pg.port,
              username="postgres", password=PASSWORD, compression="zstd")
    out = json.loads(run_ok(agent, "run", "pg", "--json").stdout)
    assert out["status"] == "success" and out["bytes_raw"] > 80_000_000
    assert out["bytes_stored"] < out["bytes_raw"]
    pg.sql("CREATE DATABASE app_copy")
    run_ok(agent, "restore", "pg", "--into", "app_copy")
    assert pg.fingerprint("app_copy", TABLES) == pg.fingerprint("app", TABLES)
    assert pg.sql("SELECT last_value FROM sales.orders_id_seq", "app_copy") == "20000"
    assert json.loads(run_ok(agent, "check", "pg", "--read-data", "--json").stdout)["status"] == "ok"


def test_postgresql_some_tables_over_the_socket_as_postgres(agent: Any, pg: Postgres, tmp_path: Path) -> None:
    # No password: peer-style trust on the socket, with pg_dump running as the postgres user.
    agent.job("pg_part", type="command", preset="postgresql", database="app", host=str(pg.sockdir),
              port=pg.port, user="postgres", tables=["public.small"])
    run_ok(agent, "run", "pg_part")
    dump = tmp_path / "part.pgdump"
    run_ok(agent, "restore", "pg_part", "--target", str(dump))
    listing = subprocess.run([f"{pg.bindir}/pg_restore", "--list", str(dump)], capture_output=True, text=True,
                             check=True).stdout
    assert "TABLE public small" in listing and "big" not in listing and "orders" not in listing
    pg.sql("CREATE DATABASE app_part")
    run_ok(agent, "restore", "pg_part", "--into", "app_part")
    assert pg.fingerprint("app_part", ["public.small"]) == pg.fingerprint("app", ["public.small"])
    assert pg.sql("SELECT to_regclass('public.big') IS NULL, to_regclass('sales.orders') IS NULL",
                  "app_part") == "t|t"


def test_postgresql_bad_database_leaves_nothing(agent: Any, pg: Postgres) -> None:
    agent.job("pg_bad", type="command", preset="postgresql", database="nope", host="127.0.0.1", port=pg.port,
              username="postgres", password=PASSWORD)
    proc = agent.run("run", "pg_bad")
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert 'pg_dump exited with status 1' in last and 'database "nope" does not exist' in last, last
    assert PASSWORD not in proc.stderr
    assert_nothing_left(agent, "pg_bad")


def test_an_inherited_pgpassword_does_not_beat_the_configured_one(agent: Any, pg: Postgres) -> None:
    """libpq prefers PGPASSWORD to the agent's password file: a stale one in the agent's own
    environment (a shell, a systemd Environment=) made restores log in with the wrong password."""
    agent.job("pg_env", type="command", preset="postgresql", database="app", host="127.0.0.1", port=pg.port,
              username="postgres", password=PASSWORD, tables=["public.small"])
    wrong = {"PGPASSWORD": "not-the-configured-password"}
    proc = agent.run("run", "pg_env", env=wrong)
    assert proc.returncode == 0, proc.stderr
    pg.sql("CREATE DATABASE app_env")
    proc = agent.run("restore", "pg_env", "--into", "app_env", env=wrong)
    assert proc.returncode == 0, proc.stderr
    assert pg.fingerprint("app_env", ["public.small"]) == pg.fingerprint("app", ["public.small"])


def test_postgresql_restore_into_a_database_with_tables_needs_clean(agent: Any, pg: Postgres) -> None:
    agent.job("pg_small", type="command", preset="postgresql", database="app", host="127.0.0.1", port=pg.port,
              username="postgres", password=PASSWORD, tables=["public.small"])
    run_ok(agent, "run", "pg_small")
    pg.sql("CREATE DATABASE app_busy")
    pg.sql("CREATE TABLE small (id int PRIMARY KEY, name text, note text); INSERT INTO small VALUES (1, 'keep', 'me');"
           "CREATE TABLE mine (x int)", "app_busy")
    proc = agent.run("restore", "pg_small", "--into", "app_busy")
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "already has 2 table(s) (public.mine, public.small)" in last and "--clean" in last
    assert pg.sql("SELECT name FROM small", "app_busy") == "keep"
    proc = run_ok(agent, "restore", "pg_small", "--into", "app_busy", "--clean")
    assert "restore --clean: app_busy has 2 table(s) (public.mine, public.small)" in proc.stderr
    assert pg.fingerprint("app_busy", ["public.small"]) == pg.fingerprint("app", ["public.small"])
    assert pg.sql("SELECT to_regclass('public.mine') IS NOT NULL", "app_busy") == "t"


# --- MariaDB -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def maria() -> Iterator[MariaDB]:
    with mariadb_server(PASSWORD) as server:
        server.sql("""
            CREATE DATABASE shop CHARACTER SET utf8mb4;
            USE shop;
            CREATE TABLE customers (id INT PRIMARY KEY, name VARCHAR(100), note TEXT) ENGINE=InnoDB;
            INSERT INTO customers SELECT seq, CONCAT('customer ', seq),
                                         IF(seq % 5 = 0, NULL, CONCAT('emoji \U0001F600 ', seq))
                                  FROM seq_1_to_2000;
            CREATE TABLE orders (id INT AUTO_INCREMENT PRIMARY KEY, customer_id INT, amount DECIMAL(10, 2),
                                 digest VARBINARY(16), FOREIGN KEY (customer_id) REFERENCES customers (id))
                                 ENGINE=InnoDB;
            INSERT INTO orders (customer_id, amount, digest)
                SELECT 1 + seq % 2000, seq * 1.5, UNHEX(MD5(seq)) FROM seq_1_to_50000;
            CREATE PROCEDURE order_count(OUT n INT) SELECT COUNT(*) INTO n FROM orders;
        """)
        yield server


def test_mariadb_dump_and_restore(agent: Any, maria: MariaDB) -> None:
    agent.job("maria", type="command", preset="mysql", database="shop", host="127.0.0.1", port=maria.port,
              username="backup", password=PASSWORD)
    out = json.loads(run_ok(agent, "run", "maria", "--json").stdout)
    assert out["status"] == "success" and out["bytes_raw"] > 1_000_000
    maria.sql("CREATE DATABASE shop_copy CHARACTER SET utf8mb4")
    run_ok(agent, "restore", "maria", "--into", "shop_copy")
    assert maria.fingerprint("shop_copy", ["customers", "orders"]) == maria.fingerprint("shop", ["customers", "orders"])
    assert "order_count" in maria.sql("SHOW PROCEDURE STATUS WHERE Db = 'shop_copy'")
    assert maria.sql("SELECT note FROM shop_copy.customers WHERE id = 1") == "emoji \U0001F600 1"


def test_mariadb_some_tables_over_the_socket(agent: Any, maria: MariaDB) -> None:
    agent.job("maria_part", type="command", preset="mysql", database="shop", host=str(maria.socket),
              username="root", tables=["customers"], compression="zstd")
    run_ok(agent, "run", "maria_part")
    maria.sql("CREATE DATABASE shop_part CHARACTER SET utf8mb4")
    run_ok(agent, "restore", "maria_part", "--into", "shop_part")
    assert maria.sql("SHOW TABLES", "shop_part") == "customers"
    assert maria.fingerprint("shop_part", ["customers"]) == maria.fingerprint("shop", ["customers"])


def test_mariadb_restore_never_drops_existing_tables_without_clean(agent: Any, maria: MariaDB) -> None:
    agent.job("maria_c", type="command", preset="mysql", database="shop", host="127.0.0.1", port=maria.port,
              username="backup", password=PASSWORD, tables=["customers"])
    run_ok(agent, "run", "maria_c")
    maria.sql("CREATE DATABASE shop_busy; CREATE TABLE shop_busy.customers (id INT PRIMARY KEY, name TEXT);"
              "INSERT INTO shop_busy.customers VALUES (1, 'keep me'); CREATE TABLE shop_busy.mine (x INT)")
    proc = agent.run("restore", "maria_c", "--into", "shop_busy")
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "already has 2 table(s) (customers, mine)" in last and "nothing was changed" in last
    assert PASSWORD not in proc.stderr
    assert maria.sql("SELECT name FROM shop_busy.customers") == "keep me"
    proc = run_ok(agent, "restore", "maria_c", "--into", "shop_busy", "--clean")
    assert "restore --clean: shop_busy has 2 table(s) (customers, mine)" in proc.stderr
    assert maria.fingerprint("shop_busy", ["customers"]) == maria.fingerprint("shop", ["customers"])
    assert maria.sql("SHOW TABLES", "shop_busy").split() == ["customers", "mine"]


def test_mariadb_a_corrupt_dump_applies_no_row(agent: Any, maria: MariaDB) -> None:
    agent.job("maria_x", type="command", preset="mysql", database="shop", host="127.0.0.1", port=maria.port,
              username="backup", password=PASSWORD, compression="none")
    sid = json.loads(run_ok(agent, "run", "maria_x", "--json").stdout)["snapshot"]
    key = f"test-node/maria_x/dumps/{sid}.dump"
    body = agent.s3.get_object(Bucket=agent.bucket, Key=key)["Body"].read()
    damage = b"-- damaged at the very end of the dump\n"  # same size: only the sha256 can tell
    agent.s3.put_object(Bucket=agent.bucket, Key=key, Body=body[:-len(damage)] + damage)
    maria.sql("CREATE DATABASE shop_empty")
    proc = agent.run("restore", "maria_x", "--into", "shop_empty")
    assert proc.returncode == 1 and "does not match its sha256" in proc.stderr
    assert maria.sql("SHOW TABLES", "shop_empty") == "", "rows reached the database before the check"
