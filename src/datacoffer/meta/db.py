"""Connections to the metadata store, and its schema migrations.

Writes go through `Database.write()`: on SQLite that is `BEGIN IMMEDIATE`, so concurrent
writers queue on the database lock instead of failing to upgrade a read lock; on PostgreSQL it
is an ordinary transaction in which callers take row locks (`with_for_update`).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from datacoffer.meta import schema


def _add_multipart(conn: Connection) -> None:
    """Version 2: the tables of multipart uploads."""
    schema.metadata.create_all(conn, tables=[schema.uploads, schema.parts])


def _widen_checksums(conn: Connection) -> None:
    """Version 3: room for a multipart object's ETag and composite SHA-256 ("…-10000").
    SQLite does not enforce VARCHAR lengths, so only other databases need the change."""
    if conn.dialect.name != "sqlite":
        for column in ("etag", "sha256"):
            conn.execute(sa.text(f"ALTER TABLE objects ALTER COLUMN {column} TYPE VARCHAR(80)"))


def _add_keys(conn: Connection) -> None:
    """Version 4: the built-in KMS, service role grants, installation key checks."""
    schema.metadata.create_all(conn, tables=[schema.kms_keys, schema.service_roles,
                                             schema.key_checks])


def _add_access(conn: Connection) -> None:
    """Version 5: coffer policies, their write locks, temporary credentials."""
    schema.metadata.create_all(conn, tables=[schema.coffer_policies, schema.coffer_locks,
                                             schema.temp_credentials])


def _add_lifecycles(conn: Connection) -> None:
    """Version 6: coffer lifecycle rules."""
    schema.metadata.create_all(conn, tables=[schema.coffer_lifecycles])


def _add_replication(conn: Connection) -> None:
    """Version 7: the replication queue, integrity findings, the audit log, the chunk CRCs of
    plain blobs (none for blobs written before: their reads are checked by SHA-256 alone)."""
    schema.metadata.create_all(conn, tables=[schema.replication_queue,
                                             schema.integrity_findings, schema.audit_log,
                                             schema.audit_head])
    _start_audit_chain(conn)
    _owe_missing_copies(conn)
    column = "BYTEA" if conn.dialect.name == "postgresql" else "BLOB"
    for table in ("objects", "parts"):  # (a store older than version 2 made parts as now)
        if "crcs" not in {c["name"] for c in sa.inspect(conn).get_columns(table)}:
            conn.execute(sa.text(f"ALTER TABLE {table} ADD COLUMN crcs {column}"))


def _add_claims(conn: Connection) -> None:
    """Version 8: claims of replication entries and of installation-wide background tasks, so
    that several processes do each piece of work once."""
    for column in ("holder VARCHAR(256) NOT NULL DEFAULT ''",
                   "lease_until_ms BIGINT NOT NULL DEFAULT 0"):
        name = column.split()[0]
        if name not in {c["name"] for c in sa.inspect(conn).get_columns("replication_queue")}:
            conn.execute(sa.text(f"ALTER TABLE replication_queue ADD COLUMN {column}"))
    schema.metadata.create_all(conn, tables=[schema.worker_leases])


def _owe_missing_copies(conn: Connection) -> None:
    """Objects stored before replication existed are owed a copy in each other Location of
    their coffer, like new ones."""
    t = schema
    held = {(object_id, region) for object_id, region in conn.execute(
        sa.select(t.object_copies.c.object_id, t.object_copies.c.region))}
    stored = conn.execute(
        sa.select(t.objects.c.id, t.objects.c.coffer_id, t.coffers.c.locations)
        .join(t.coffers, t.coffers.c.id == t.objects.c.coffer_id)
        .where(t.objects.c.state == "stored"))
    now = int(time.time() * 1000)
    owed = [{"object_id": row.id, "region": region, "coffer_id": row.coffer_id,
             "created_ms": now, "next_ms": now, "attempts": 0, "last_error": ""}
            for row in stored for region in row.locations.split(",")[1:]
            if (row.id, region) not in held]
    # (the columns of version 7 only: later ones do not exist yet when this runs)
    queue = sa.table("replication_queue", *(sa.column(name) for name in owed[0])) if owed \
        else None
    for start in range(0, len(owed), 1000):
        conn.execute(sa.insert(queue), owed[start:start + 1000])


def _start_audit_chain(conn: Connection) -> None:
    """The audit chain's head row exists from the start: appends of several processes then
    only ever lock and update it (two first appends cannot both insert it)."""
    if conn.execute(sa.select(schema.audit_head.c.id)).first() is None:
        conn.execute(schema.audit_head.insert().values(id=1, seq=0,
                                                       hash=schema.AUDIT_GENESIS))


#: Migration N turns schema version N-1 into version N. A new database is created at the
#: latest version directly from `schema`, so an entry is only needed for a change.
MIGRATIONS: dict[int, Callable[[Connection], None]] = {
    2: _add_multipart, 3: _widen_checksums, 4: _add_keys, 5: _add_access,
    6: _add_lifecycles, 7: _add_replication, 8: _add_claims}
LATEST = 8


def _sqlite_setup(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")  # an acknowledged commit survives power loss
        cur.execute("PRAGMA busy_timeout=10000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        options = conn.get_execution_options()
        if "sqlite_begin" in options:  # a write: choose its durability, then lock
            sync = "FULL" if options.get("durable", True) else "NORMAL"
            conn.exec_driver_sql(f"PRAGMA synchronous={sync}")
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")


class SchemaTooNew(RuntimeError):
    """The metadata store was written by a newer version of the program."""


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = sa.create_engine(url, pool_size=8, max_overflow=16, pool_pre_ping=False)
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        #: SQLite has one writer at a time: this process's writers queue here, in order,
        #: instead of sleeping in SQLite's busy handler (other processes still use that).
        self._write_lock = threading.Lock() if self.is_sqlite else contextlib.nullcontext()
        if self.is_sqlite:
            _sqlite_setup(self.engine)

    @contextmanager
    def write(self, *, durable: bool = True) -> Iterator[Connection]:
        """A write transaction. `durable=False` may skip the fsync of its commit (SQLite):
        for writes that a crash may lose without harm, such as a key reservation, whose
        files are swept at the next start anyway; a later durable commit persists it too."""
        with self._write_lock, self.engine.connect() as conn:
            if self.is_sqlite:
                conn = conn.execution_options(sqlite_begin="IMMEDIATE", durable=durable)
            with conn.begin():
                yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn, conn.begin():
            yield conn

    def migrate(self) -> int:
        """Bring the schema to the latest version; return the version found before."""
        with self.write() as conn:
            if not sa.inspect(conn).has_table("schema_version"):
                schema.metadata.create_all(conn)
                conn.execute(schema.schema_version.insert().values(version=LATEST))
                _start_audit_chain(conn)
                return 0
            found = conn.execute(sa.select(schema.schema_version.c.version)).scalar_one()
            if found > LATEST:
                raise SchemaTooNew(
                    f"the metadata store has schema version {found}, newer than this "
                    f"program's {LATEST}: upgrade the program")
            for version in range(found + 1, LATEST + 1):
                MIGRATIONS[version](conn)
                conn.execute(schema.schema_version.update().values(version=version))
            return found

    def close(self) -> None:
        self.engine.dispose()
