"""The server on PostgreSQL metadata, as service.md's "Scale" describes: several server
processes with their own data directories share one PostgreSQL database, one root key (from the
environment) and one region storage, and behave as one service."""

from __future__ import annotations

import base64
import os
import time

import pytest

from datacoffer.client import Client, errors
from tests.serverproc import ServerProcess
from tests.test_metadata import fresh_pg_url


@pytest.fixture
def pg_database():
    yield from fresh_pg_url()


def test_two_servers_share_postgresql_and_storage(tmp_path, pg_database):
    shared = tmp_path / "storage"
    config = tmp_path / "datacoffer.toml"
    config.write_text(f'metadata_url = "{pg_database}"\n[regions]\n'
                      f'ap-tianjin = "{shared / "tianjin"}"\n'
                      f'ap-shanghai = "{shared / "shanghai"}"\n')
    env = {**os.environ, "DATACOFFER_ROOT_KEY": base64.b64encode(os.urandom(32)).decode(),
           "DATACOFFER_MASTER_KEY": base64.b64encode(os.urandom(32)).decode()}
    a = ServerProcess(tmp_path / "a", env=env, config=config)
    b = ServerProcess(tmp_path / "b", env=env, config=config)
    a.start()
    b.start()
    try:
        ca = a.new_sdk()  # the account lives in PostgreSQL: B knows it too
        doc = b.admin("key", "create", "--uin", "100000000001")
        cb = Client(b.base_url, doc["SecretId"], doc["SecretKey"])
        ca.create_coffer("shared-1250000000", ["ap-tianjin", "ap-shanghai"])
        ca.put_object("shared-1250000000", "a.txt", b"written via A")
        with cb.get_object("shared-1250000000", "a.txt") as r:
            assert r.read() == b"written via A"
        with pytest.raises(errors.ObjectAlreadyExistsOwnedByYou):
            cb.put_object("shared-1250000000", "a.txt", b"again")
        keys = [f"k/{i}" for i in range(5)]
        for i, key in enumerate(keys):
            client = ca if i % 2 else cb
            client.put_object("shared-1250000000", key, key.encode())
        page = cb.get_coffer("shared-1250000000", prefix="k/", max_keys=3)
        assert [o.key for o in page.objects] == keys[:3]
        assert page.is_truncated
        # a multipart upload started on A is seen and continued on B
        upload_id = ca.initiate_multipart_upload("shared-1250000000", "big").upload_id
        part = cb.upload_part("shared-1250000000", "big", upload_id, 1, b"part one", length=8)
        listing = ca.list_parts("shared-1250000000", "big", upload_id)
        assert [(p.number, p.etag, p.size) for p in listing.parts] == [(1, part.etag, 8)]
        cb.abort_multipart_upload("shared-1250000000", "big", upload_id)
        assert ca.list_multipart_uploads("shared-1250000000").uploads == []
        assert a.admin("status")["Metadata"] == "postgresql"
        # both servers' replication workers share the queue: every object reaches ap-shanghai
        # once, checked, whichever server copied it
        shanghai = Client(a.base_url, doc["SecretId"], doc["SecretKey"], region="ap-shanghai")
        deadline = time.monotonic() + 30
        while a.admin("status")["Replication"]["Pending"] and time.monotonic() < deadline:
            time.sleep(0.2)
        for key in ["a.txt", *keys]:
            with shanghai.get_object("shared-1250000000", key) as r:
                assert r.read() == (b"written via A" if key == "a.txt" else key.encode())
        shanghai.close()
        assert b.admin("run", "scrub")["Findings"] == []
        # both servers appended to one audit chain in PostgreSQL, one batch after another
        verdict = b.admin("audit", "verify")
        assert verdict["Valid"] is True
        assert verdict["Entries"] == verdict["Head"]["Seq"] >= 14
        ca.close()
        cb.close()
    finally:
        a.stop()
        b.stop()
    assert not (tmp_path / "a" / "metadata.db").exists()
