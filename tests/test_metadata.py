"""The metadata layer on both stores it is written for: SQLite and a real PostgreSQL.

The server runs on SQLite by default; these tests show the same domain code (identities,
coffers, key reservations, listings in UTF-8 byte order) works unchanged on PostgreSQL, and
that schema versions are checked.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

from datacoffer.core import audit
from datacoffer.core.coffers import Coffers, CofferSpec
from datacoffer.core.identities import Identities
from datacoffer.core.keyring import Keyring
from datacoffer.core.objects import Objects
from datacoffer.core.roles import Roles
from datacoffer.errors import CdcsError
from datacoffer.kms import KmsError
from datacoffer.kms.builtin import BuiltinKms
from datacoffer.meta import db as dbmod
from datacoffer.meta.schema import (
    metadata,
    object_copies,
    objects,
    replication_queue,
    schema_version,
)
from datacoffer.rootkey import SealingKey
from datacoffer.storage.blobs import RegionStore

PG_ADMIN = os.environ.get("DATACOFFER_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def fresh_pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database's URL, the database dropped afterwards."""
    name = f"datacoffer_test_{secrets.token_hex(4)}"
    try:
        admin = psycopg.connect(PG_ADMIN, autocommit=True)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN} (.ci/run starts it): {exc}")
    admin.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    yield f"{base}/{name}"
    admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    admin.close()


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    yield from fresh_pg_url()


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path: Path) -> Iterator[dbmod.Database]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'metadata.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    db = dbmod.Database(url)
    db.migrate()
    yield db
    if request.param == "postgresql":
        metadata.drop_all(db.engine)
    db.close()


def test_migrate_creates_latest_and_is_idempotent(tmp_path):
    db = dbmod.Database(f"sqlite:///{tmp_path / 'm.db'}")
    assert db.migrate() == 0
    assert db.migrate() == dbmod.LATEST
    with db.read() as conn:
        assert conn.execute(sa.select(schema_version.c.version)).scalar_one() == dbmod.LATEST
    db.close()


def test_version_1_store_gains_the_multipart_tables(tmp_path):
    """A store written by the first release (schema version 1, no multipart tables) is
    brought to the latest version by its migrations, keeping what it holds."""
    db = dbmod.Database(f"sqlite:///{tmp_path / 'm.db'}")
    db.migrate()
    identities = Identities(db, SealingKey(secrets.token_bytes(32)))
    identities.create_account("1250000000", "100000000001")
    with db.write() as conn:  # back to what version 1 looked like
        conn.execute(sa.text("DROP TABLE parts"))
        conn.execute(sa.text("DROP TABLE uploads"))
        conn.execute(schema_version.update().values(version=1))
    assert db.migrate() == 1
    with db.read() as conn:
        assert conn.execute(sa.select(schema_version.c.version)).scalar_one() == dbmod.LATEST
        assert {"uploads", "parts"} <= set(sa.inspect(conn).get_table_names())
    assert identities.get("100000000001") is not None
    db.close()


def test_version_6_store_gains_replication_audit_and_crcs(database):
    """A store written before replication (schema version 6) is brought to version 7: the
    new tables, the chunk-CRC columns (empty for the blobs it holds), an empty audit chain
    ready for appends, and a copy owed to every other Location of each stored object."""
    identities = Identities(database, SealingKey(secrets.token_bytes(32)))
    key = identities.create_account("1250000000", "100000000001")
    regions = ("ap-tianjin", "ap-shanghai", "ap-guangzhou")
    coffer = Coffers(database, regions, max_coffers=5).create(
        key.identity, "old-1250000000", CofferSpec(regions))
    with database.write() as conn:  # an object stored before version 7, in its primary
        for n, state in enumerate(("stored", "stored", "multipart")):
            object_id = conn.execute(objects.insert(), {
                "coffer_id": coffer.id, "key": f"k{n}", "state": state,
                "writer_uin": "100000000001", "blob_id": f"b{n}", "created_ms": 1}
            ).inserted_primary_key[0]
            if state == "stored":
                conn.execute(object_copies.insert(), {"object_id": object_id,
                                                      "region": "ap-tianjin", "created_ms": 1})
        conn.execute(object_copies.insert(), {"object_id": object_id - 1,  # (k1)
                                              "region": "ap-guangzhou", "created_ms": 1})
        for table in ("replication_queue", "integrity_findings", "audit_log", "audit_head"):
            conn.execute(sa.text(f"DROP TABLE {table}"))
        for table in ("objects", "parts"):
            conn.execute(sa.text(f"ALTER TABLE {table} DROP COLUMN crcs"))
        conn.execute(schema_version.update().values(version=6))
    assert database.migrate() == 6
    with database.read() as conn:
        owed = conn.execute(sa.select(objects.c.key, replication_queue.c.region).join(
            objects, objects.c.id == replication_queue.c.object_id)).all()
        assert sorted(tuple(row) for row in owed) == [("k0", "ap-guangzhou"), ("k0", "ap-shanghai"),
                                ("k1", "ap-shanghai")]
        assert conn.execute(sa.select(objects.c.crcs)).scalars().all() == [None] * 3
    assert audit.head(database) == (0, audit.GENESIS)
    with database.write() as conn:
        audit.append(conn, [audit.AuditEntry(1, "r", "-", "-", "PutObject", "c/k", 200, "OK")])
    assert audit.verify(database).entries == 1


def test_newer_schema_is_refused(tmp_path):
    db = dbmod.Database(f"sqlite:///{tmp_path / 'm.db'}")
    db.migrate()
    with db.write() as conn:
        conn.execute(schema_version.update().values(version=dbmod.LATEST + 1))
    with pytest.raises(RuntimeError, match="newer than this program"):
        db.migrate()
    db.close()


def test_domain_on_both_stores(database, tmp_path):
    root_key = SealingKey(secrets.token_bytes(32))
    identities = Identities(database, root_key)
    key = identities.create_account("1250000000", "100000000001")
    found = identities.lookup_key(key.secret_id)
    assert found is not None and found.secret_key == key.secret_key
    other = identities.create_account("1250000001", "100000000002")

    coffers = Coffers(database, ("ap-tianjin",), max_coffers=2)
    coffer = coffers.create(key.identity, "docs-1250000000", CofferSpec(("ap-tianjin",)))
    with pytest.raises(CdcsError) as err:
        coffers.create(other.identity, "docs-1250000000", CofferSpec(("ap-tianjin",)))
    assert err.value.code.name == "CofferAlreadyExists"

    store = RegionStore("ap-tianjin", tmp_path / "r")
    store.prepare()
    # the built-in KMS and the service role on this store too
    kms, roles = BuiltinKms(database, root_key), Roles(database)
    kms_key = kms.create_key("1250000000", "ap-tianjin")
    assert kms.unwrap(kms_key.key_id, kms.wrap(kms_key.key_id, b"k" * 32)) == b"k" * 32
    assert not kms.set_enabled(kms_key.key_id, False).enabled
    with pytest.raises(KmsError, match="disabled"):
        kms.wrap(kms_key.key_id, b"k" * 32)
    assert [k.key_id for k in kms.list_keys("1250000000")] == [kms_key.key_id]
    roles.grant("1250000000")
    roles.grant("1250000000")  # twice is once
    assert roles.granted("1250000000") and not roles.granted("1250000001")
    roles.revoke("1250000000")
    assert not roles.granted("1250000000")
    keyring = Keyring(SealingKey(secrets.token_bytes(32)), kms, roles)
    objects = Objects(database, {"ap-tianjin": store}, keyring, lease_seconds=10,
                      max_object_size=1 << 30)
    keys = ["z", "a/1", "a/2", "é", "中", "😀", "b"]
    for k in keys:
        res = objects.reserve(coffer, k, key.identity)
        blob = store.create(res.blob_id)
        blob.write(k.encode())
        blob.commit()
        objects.finish(res, size=len(k.encode()), etag="e", sha256="s", content_type="x/y")

    with pytest.raises(CdcsError) as err:
        objects.reserve(coffer, "a/1", key.identity)
    assert err.value.code.name == "ObjectAlreadyExistsOwnedByYou"
    # Another identity (over HTTP only once policies can grant it PutObject):
    with pytest.raises(CdcsError) as err:
        objects.reserve(coffer, "a/1", other.identity)
    assert err.value.code.name == "ObjectAlreadyExists"
    pending = objects.reserve(coffer, "pending", key.identity)
    with pytest.raises(CdcsError) as err:
        objects.reserve(coffer, "pending", other.identity)
    assert err.value.code.name == "ObjectAlreadyUploading"
    with pytest.raises(CdcsError) as err:
        coffers.delete(coffer)
    assert err.value.code.name == "CofferNotEmpty"
    objects.cancel(pending)

    listing = coffers.list_objects(coffer, "", "/", "", 1000)
    names = [o.key for o in listing.contents]
    assert names == sorted(names, key=lambda s: s.encode("utf-8"))
    assert names == ["b", "z", "é", "中", "😀"]
    assert listing.common_prefixes == ["a/"]
    page = coffers.list_objects(coffer, "", "", "a/2", 2)
    assert [o.key for o in page.contents] == ["b", "z"]
    assert page.is_truncated and page.next_marker == "z"
