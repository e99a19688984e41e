"""The server on PostgreSQL metadata, as service.md's "Scale" describes: several server
processes with their own data directories share one PostgreSQL database, one root key (from the
environment) and one region storage, and behave as one service. And what PostgreSQL refuses
that SQLite takes: a NUL in a request's path (recorded escaped in the audit log) fails no
request, neither its own nor those sharing its group commit."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from datacoffer.client import Client, errors
from tests.serverproc import BIN, ServerProcess
from tests.test_metadata import fresh_pg_url


@pytest.fixture
def pg_database():
    yield from fresh_pg_url()


def shared_setup(tmp_path: Path, url: str) -> tuple[Path, dict[str, str]]:
    """The configuration (metadata in PostgreSQL at `url`, region storage under tmp_path) and
    the environment (root and master keys) that server processes of one service share."""
    shared = tmp_path / "storage"
    config = tmp_path / "datacoffer.toml"
    config.write_text(f'metadata_url = "{url}"\n[regions]\n'
                      f'ap-tianjin = "{shared / "tianjin"}"\n'
                      f'ap-shanghai = "{shared / "shanghai"}"\n')
    env = {**os.environ, "DATACOFFER_ROOT_KEY": base64.b64encode(os.urandom(32)).decode(),
           "DATACOFFER_MASTER_KEY": base64.b64encode(os.urandom(32)).decode()}
    return config, env


def test_two_servers_share_postgresql_and_storage(tmp_path, pg_database):
    config, env = shared_setup(tmp_path, pg_database)
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


def audit_export(srv: ServerProcess) -> list[dict[str, Any]]:
    """`admin audit export` of the server's installation: its JSON lines."""
    done = subprocess.run([*BIN, "admin", "audit", "export", "--data-dir", str(srv.data_dir),
                           "--config", str(srv.config)], capture_output=True, text=True,
                          env=srv.env, timeout=60)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_a_nul_in_a_path_fails_no_other_request(tmp_path, pg_database):
    """PostgreSQL refuses a NUL in a text column: an unsigned request whose path holds %00
    still gets its own answer (401 AuthFailed), recorded with \\x00, and the requests of
    another account sent at the same time (sharing its group commits) all succeed and are
    all in the log, which verifies."""
    config, env = shared_setup(tmp_path, pg_database)
    srv = ServerProcess(tmp_path / "a", env=env, config=config, background=False)
    srv.start()
    owner = srv.new_client()
    other = srv.new_client("1250000001", "100000000002")
    try:
        nul_coffer, busy = "nul-1250000000", "busy-1250000001"
        owner.make_coffer(nul_coffer)
        other.make_coffer(busy)
        assert other.put(f"/{busy}/obj", content=b"data").status_code == 200

        def one(step: str) -> tuple[str, httpx.Response]:
            if step == "nul":
                return step, owner.http.get(f"/{nul_coffer}/a%00b")
            return step, other.request(step, f"/{busy}/obj")

        plan = (["nul"] + ["HEAD", "GET"] * 4) * 12
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(one, plan))
        for step, r in answers:
            expected = (401, "AuthFailed") if step == "nul" else (200, None)
            assert (r.status_code, r.headers.get("x-cdcs-error-code")) == expected, r.text
        entries = {e["RequestId"]: e for e in audit_export(srv)}
        for step, r in answers:
            entry = entries[r.headers["x-cdcs-request-id"]]
            if step == "nul":
                assert (entry["Identity"], entry["Operation"], entry["Resource"],
                        entry["Status"], entry["Code"]) == (
                    "-", "GetObject", f"{nul_coffer}/a\\x00b", 401, "AuthFailed")
            else:
                assert (entry["Operation"], entry["Resource"], entry["Status"]) == (
                    f"{step.title()}Object", f"{busy}/obj", 200)
        verdict = srv.admin("audit", "verify")
        assert (verdict["Valid"], verdict["FirstBroken"]) == (True, None)
        assert verdict["Entries"] == verdict["Head"]["Seq"] == len(entries) >= len(plan)
    finally:
        owner.close()
        other.close()
        srv.stop()
