"""The server on PostgreSQL metadata, as service.md's "Scale" describes: several server
processes with their own data directories share one PostgreSQL database, one root key (from the
environment) and one region storage, and behave as one service."""

from __future__ import annotations

import base64
import os

import pytest

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
    env = {**os.environ, "DATACOFFER_ROOT_KEY": base64.b64encode(os.urandom(32)).decode()}
    a = ServerProcess(tmp_path / "a", env=env, config=config)
    b = ServerProcess(tmp_path / "b", env=env, config=config)
    a.start()
    b.start()
    try:
        ca = a.new_client()  # the account lives in PostgreSQL: B knows it too
        doc = b.admin("key", "create", "--uin", "100000000001")
        cb = type(ca)(b.base_url, doc["SecretId"], doc["SecretKey"])
        ca.make_coffer("shared-1250000000", "ap-tianjin", "ap-shanghai")
        assert ca.put("/shared-1250000000/a.txt", content=b"written via A").status_code == 200
        r = cb.get("/shared-1250000000/a.txt")
        assert (r.status_code, r.content) == (200, b"written via A")
        r = cb.put("/shared-1250000000/a.txt", content=b"again")
        assert r.headers["x-cdcs-error-code"] == "ObjectAlreadyExistsOwnedByYou"
        keys = [f"k/{i}" for i in range(5)]
        for i, key in enumerate(keys):
            client = ca if i % 2 else cb
            assert client.put(f"/shared-1250000000/{key}", content=key.encode()).status_code == 200
        r = cb.get("/shared-1250000000", params={"prefix": "k/", "max-keys": "3"})
        assert r.status_code == 200
        assert [f"<Key>{k}</Key>".encode() in r.content for k in keys] == [
            True, True, True, False, False]
        # a multipart upload started on A is seen and continued on B
        r = ca.request("POST", "/shared-1250000000/big", params={"uploads": ""})
        upload_id = r.json()["UploadId"]
        r = cb.put("/shared-1250000000/big", params={"partNumber": "1", "uploadId": upload_id},
                   content=b"part one")
        assert r.status_code == 200
        r = ca.get("/shared-1250000000/big", params={"uploadId": upload_id})
        assert b"<PartNumber>1</PartNumber>" in r.content
        assert cb.delete("/shared-1250000000/big",
                         params={"uploadId": upload_id}).status_code == 204
        assert a.admin("status")["Metadata"] == "postgresql"
        ca.close()
        cb.close()
    finally:
        a.stop()
        b.stop()
    assert not (tmp_path / "a" / "metadata.db").exists()
