"""Durability and concurrency of multipart uploads (api.md 13-18, service.md "Durability"),
shown on real server processes, real files and real SIGKILLs:

- an acknowledged part survives a `kill -9`; a part write cut short by one leaves no file and
  no row once the server restarts, and the upload (and the key it holds) stays usable;
- a re-uploaded part replaces the old one: one blob file per part number, never two;
- an aborted upload leaves no file and no row, even with a part streaming at the time;
- parallel part writes, to different and to the same part number, in one process or in two
  processes on one data directory, are all acknowledged and listed consistently;
- a stalled part write is dropped with a 400 and leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import secrets
import sqlite3
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.serverproc import ServerProcess, SignedClient
from tests.test_durability import (
    OWN_APP_ID,
    OWN_UIN,
    Answer,
    MiB,
    Own,
    RawUpload,
    blob_files,
    check_error,
    db_rows,
    new_client,
    own_server,
    tmp_files,
    wait_until,
)

KiB = 1024


# -- helpers --------------------------------------------------------------------------------


def etag_of(data: bytes) -> str:
    return f'"{hashlib.md5(data).hexdigest()}"'


def initiate(client: SignedClient, coffer: str, key: str) -> str:
    r = client.request("POST", f"/{coffer}/{key}", params={"uploads": ""})
    assert r.status_code == 200, r.text
    doc = json.loads(r.content)
    assert (doc["Coffer"], doc["Key"]) == (coffer, key)
    assert len(doc["UploadId"]) >= 32
    return doc["UploadId"]


def part_params(upload_id: str, number: int) -> dict[str, str]:
    return {"partNumber": str(number), "uploadId": upload_id}


def put_part(client: SignedClient, coffer: str, key: str, upload_id: str, number: int,
             data: bytes) -> str:
    """UploadPart, expected to succeed; returns the ETag answered (checked against the MD5)."""
    r = client.put(f"/{coffer}/{key}", params=part_params(upload_id, number), content=data)
    assert r.status_code == 200, (number, r.status_code, r.text)
    assert r.headers["etag"] == etag_of(data)
    return r.headers["etag"]


def raw_part(client: SignedClient, coffer: str, key: str, upload_id: str, number: int,
             length: int) -> RawUpload:
    """An UploadPart whose body the test sends piecewise."""
    return RawUpload(client, f"/{coffer}/{key}", length, params=part_params(upload_id, number))


def list_parts_xml(client: SignedClient, coffer: str, key: str,
                   upload_id: str) -> list[tuple[int, str, int]]:
    """ListParts: every <Part> as (PartNumber, ETag, Size), in the order listed."""
    r = client.get(f"/{coffer}/{key}", params={"uploadId": upload_id})
    assert r.status_code == 200, r.text
    root = ET.fromstring(r.content)
    assert root.tag == "ListPartsResult"
    assert root.findtext("UploadId") == upload_id
    assert root.findtext("IsTruncated") == "false"
    return [(int(p.findtext("PartNumber")), p.findtext("ETag"), int(p.findtext("Size")))
            for p in root.findall("Part")]


def parts_of(data: dict[int, bytes]) -> list[tuple[int, str, int]]:
    """What ListParts should show for these part bodies."""
    return [(n, etag_of(body), len(body)) for n, body in sorted(data.items())]


def listed_uploads(client: SignedClient, coffer: str) -> list[tuple[str, str]]:
    """ListMultipartUploads: (Key, UploadId) of every upload in progress."""
    r = client.get(f"/{coffer}", params={"uploads": ""})
    assert r.status_code == 200, r.text
    doc = json.loads(r.content)
    assert doc["IsTruncated"] == "false"
    return [(u["Key"], u["UploadId"]) for u in doc["Upload"]]


def part_rows(data_dir: Path, upload_id: str) -> list[tuple[int, str, str]]:
    """The `parts` rows of an upload: (part_number, state, blob_id)."""
    return db_rows(data_dir, "SELECT part_number, state, blob_id FROM parts "
                             "WHERE upload_id = ? ORDER BY part_number, state", upload_id)


def stored_blob_ids(data_dir: Path, upload_id: str) -> dict[int, str]:
    rows = part_rows(data_dir, upload_id)
    assert all(state == "stored" for _, state, _ in rows), rows
    found = {n: blob_id for n, _, blob_id in rows}
    assert len(found) == len(rows), rows  # one row per part number
    return found


def blob_names(data_dir: Path) -> set[str]:
    return {p.name for p in blob_files(data_dir)}


def check_blobs_hold(data_dir: Path, upload_id: str, data: dict[int, bytes]) -> None:
    """Each part number has exactly one stored row, whose blob file holds exactly its bytes."""
    blobs = stored_blob_ids(data_dir, upload_id)
    assert sorted(blobs) == sorted(data)
    for number, blob_id in blobs.items():
        (path,) = [p for p in blob_files(data_dir) if p.name == blob_id]
        assert path.parent.name == blob_id[:2]
        assert path.read_bytes() == data[number], number


def wait_part_streaming(data_dir: Path, upload_id: str, at_least: int) -> Path:
    """Wait until a part write of this upload has its "writing" row and at least `at_least`
    bytes in tmp/; return its tmp file."""
    found: list[Path] = []

    def streaming() -> bool:
        writing = [b for _, state, b in part_rows(data_dir, upload_id) if state == "writing"]
        found[:] = [p for p in tmp_files(data_dir) if p.name in writing
                    and p.stat().st_size >= at_least]
        return bool(found)

    wait_until(streaming, what=f"a part of {upload_id} to stream {at_least} bytes to tmp/")
    return found[0]


def finish_body(up: RawUpload, rest: bytes) -> Answer | None:
    """Send the rest of a held-open body and read the answer; None if the server closed the
    connection instead of answering."""
    try:
        up.send(rest)
        return up.response()
    except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
        return None


@pytest.fixture(scope="module")
def mp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Own]:
    yield from own_server(tmp_path_factory, "multipart")


# -- 1. SIGKILL during UploadPart -----------------------------------------------------------


def test_sigkill_during_upload_part_keeps_acknowledged_parts(tmp_path):
    srv = ServerProcess(tmp_path / "data")
    srv.start()
    try:
        client = new_client(srv)
        coffer, key = f"mp-crash-{OWN_APP_ID}", "crashed/upload.bin"
        client.make_coffer(coffer)
        upload_id = initiate(client, coffer, key)
        data = {1: os.urandom(MiB + 17), 2: os.urandom(300 * KiB + 3)}
        etags = {n: put_part(client, coffer, key, upload_id, n, body)
                 for n, body in data.items()}

        up = raw_part(client, coffer, key, upload_id, 3, 16 * MiB)
        try:
            up.send(os.urandom(3 * MiB))
            wait_part_streaming(srv.data_dir, upload_id, MiB)
            srv.kill()
        finally:
            up.close()
        assert len(tmp_files(srv.data_dir)) == 1  # the part write died mid-body
        srv.start()

        assert list_parts_xml(client, coffer, key, upload_id) == [
            (1, etags[1], len(data[1])), (2, etags[2], len(data[2]))]
        assert listed_uploads(client, coffer) == [(key, upload_id)]
        assert tmp_files(srv.data_dir) == []
        assert part_rows(srv.data_dir, upload_id) == [
            (n, "stored", b) for n, b in sorted(stored_blob_ids(srv.data_dir, upload_id).items())]
        assert blob_names(srv.data_dir) == set(stored_blob_ids(srv.data_dir, upload_id).values())
        assert len(blob_files(srv.data_dir)) == 2
        check_blobs_hold(srv.data_dir, upload_id, data)

        data[3] = os.urandom(2 * MiB + 5)
        put_part(client, coffer, key, upload_id, 3, data[3])
        assert list_parts_xml(client, coffer, key, upload_id) == parts_of(data)
        assert len(blob_files(srv.data_dir)) == 3
        check_blobs_hold(srv.data_dir, upload_id, data)

        # The upload still holds its key.
        check_error(client.put(f"/{coffer}/{key}", content=b"x"), 409, "ObjectAlreadyUploading")
        r = client.request("POST", f"/{coffer}/{key}", params={"uploads": ""})
        check_error(r, 409, "ObjectAlreadyUploading")
        assert listed_uploads(client, coffer) == [(key, upload_id)]
        client.close()
    finally:
        srv.stop()


# -- 2. a replaced part leaves no file ------------------------------------------------------


def test_replaced_part_leaves_one_blob_file(mp):
    client, coffer, data_dir = mp.client, mp.coffer, mp.srv.data_dir
    key = "replaced.bin"
    upload_id = initiate(client, coffer, key)
    before = blob_names(data_dir)
    bodies = [os.urandom(200 * KiB), os.urandom(MiB + 1), b"third and last body"]
    for body in bodies:
        put_part(client, coffer, key, upload_id, 1, body)
        assert list_parts_xml(client, coffer, key, upload_id) == parts_of({1: body})
        (added,) = blob_names(data_dir) - before
        assert blob_names(data_dir) - {added} == before
        assert stored_blob_ids(data_dir, upload_id) == {1: added}
        check_blobs_hold(data_dir, upload_id, {1: body})
    assert tmp_files(data_dir) == []
    (path,) = [p for p in blob_files(data_dir) if p.name not in before]
    assert path.read_bytes() == bodies[-1]


# -- 3. an aborted upload leaves no file ----------------------------------------------------


def test_abort_with_a_part_streaming_leaves_no_file(mp):
    client, coffer, data_dir = mp.client, mp.coffer, mp.srv.data_dir
    key = "aborted.bin"
    path = f"/{coffer}/{key}"
    before = blob_names(data_dir)
    upload_id = initiate(client, coffer, key)
    data = {1: os.urandom(MiB), 2: os.urandom(64 * KiB), 4: b"four"}
    for number, body in data.items():
        put_part(client, coffer, key, upload_id, number, body)
    assert len(blob_names(data_dir) - before) == 3

    held = os.urandom(4 * MiB)
    up = raw_part(client, coffer, key, upload_id, 3, len(held))
    try:
        up.send(held[: 2 * MiB])
        wait_part_streaming(data_dir, upload_id, MiB)
        r = client.delete(path, params={"uploadId": upload_id})
        assert r.status_code == 204, r.text
        assert r.content == b""
        answer = finish_body(up, held[2 * MiB:])
    finally:
        up.close()
    if answer is not None:  # the held-open part is refused, never stored
        check_error(answer, 404, "NoSuchUpload")

    wait_until(lambda: tmp_files(data_dir) == [] and part_rows(data_dir, upload_id) == [],
               what="the aborted upload's files and rows to go")
    assert blob_names(data_dir) == before
    assert db_rows(data_dir, "SELECT count(*) FROM uploads WHERE upload_id = ?",
                   upload_id) == [(0,)]
    assert (key, upload_id) not in listed_uploads(client, coffer)
    check_error(client.get(path, params={"uploadId": upload_id}), 404, "NoSuchUpload")
    r = client.put(path, params=part_params(upload_id, 5), content=b"late")
    check_error(r, 404, "NoSuchUpload")
    check_error(client.delete(path, params={"uploadId": upload_id}), 404, "NoSuchUpload")
    assert blob_names(data_dir) == before
    assert tmp_files(data_dir) == []
    # The key is free again.
    r = client.put(path, content=b"a plain object now")
    assert r.status_code == 200, r.text
    assert client.get(path).content == b"a plain object now"


def test_part_writer_killed_after_an_abort_leaves_nothing(tmp_path):
    """Abort while a part streams keeps that write's row (the upload is marked aborted), so
    when the server then dies, the next start reclaims the dead write: no row, no file."""
    srv = ServerProcess(tmp_path / "data")
    srv.start()
    try:
        client = new_client(srv)
        coffer, key = f"mp-abort-kill-{OWN_APP_ID}", "k.bin"
        client.make_coffer(coffer)
        upload_id = initiate(client, coffer, key)
        put_part(client, coffer, key, upload_id, 1, b"stored part")
        held = os.urandom(4 * MiB)
        up = raw_part(client, coffer, key, upload_id, 2, len(held))
        try:
            up.send(held[: 2 * MiB])
            wait_part_streaming(srv.data_dir, upload_id, MiB)
            r = client.delete(f"/{coffer}/{key}", params={"uploadId": upload_id})
            assert r.status_code == 204, r.text
            assert [state for _, state, _ in part_rows(srv.data_dir, upload_id)] == ["writing"]
            assert db_rows(srv.data_dir, "SELECT state FROM uploads WHERE upload_id = ?",
                           upload_id) == [("aborted",)]
            check_error(client.get(f"/{coffer}/{key}", params={"uploadId": upload_id}), 404,
                        "NoSuchUpload")
            assert (key, upload_id) not in listed_uploads(client, coffer)
            srv.kill()
        finally:
            up.close()
        srv.start()
        assert part_rows(srv.data_dir, upload_id) == []
        assert db_rows(srv.data_dir, "SELECT count(*) FROM uploads WHERE upload_id = ?",
                       upload_id) == [(0,)]
        assert tmp_files(srv.data_dir) == [] and blob_names(srv.data_dir) == set()
        assert client.put(f"/{coffer}/{key}", content=b"free").status_code == 200
        client.close()
    finally:
        srv.stop()


# -- 4. concurrency -------------------------------------------------------------------------


def test_parallel_parts_are_all_stored(mp):
    client, coffer, data_dir = mp.client, mp.coffer, mp.srv.data_dir
    key = "parallel.bin"
    upload_id = initiate(client, coffer, key)
    before = blob_names(data_dir)
    data = {n: os.urandom(256 * KiB + n) for n in range(1, 9)}
    barrier = threading.Barrier(len(data))

    def one(number: int):
        barrier.wait()
        return client.put(f"/{coffer}/{key}", params=part_params(upload_id, number),
                          content=data[number])

    with ThreadPoolExecutor(len(data)) as pool:
        answers = dict(zip(data, pool.map(one, data), strict=True))
    for number, r in answers.items():
        assert r.status_code == 200, (number, r.text)
        assert r.headers["etag"] == etag_of(data[number])
    assert list_parts_xml(client, coffer, key, upload_id) == parts_of(data)
    assert len(blob_names(data_dir) - before) == 8
    assert blob_names(data_dir) - set(stored_blob_ids(data_dir, upload_id).values()) == before
    check_blobs_hold(data_dir, upload_id, data)
    assert tmp_files(data_dir) == []


def test_two_concurrent_uploads_of_one_part_number(mp):
    """Both part writes are streaming at once (each has its tmp file) before either ends:
    both are acknowledged, the one committed last is the part, the other's file is gone."""
    client, coffer, data_dir = mp.client, mp.coffer, mp.srv.data_dir
    key = "same-part.bin"
    upload_id = initiate(client, coffer, key)
    before = blob_names(data_dir)
    bodies = [os.urandom(3 * MiB), os.urandom(3 * MiB + 1)]
    ups = [raw_part(client, coffer, key, upload_id, 1, len(b)) for b in bodies]
    try:
        for up, body in zip(ups, bodies, strict=True):
            up.send(body[: 2 * MiB])
        wait_until(lambda: len([p for p in tmp_files(data_dir) if p.stat().st_size >= MiB]) == 2,
                   what="both part writes to stream to tmp/")
        assert [s for _, s, _ in part_rows(data_dir, upload_id)] == ["writing", "writing"]
        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda i: finish_body(ups[i], bodies[i][2 * MiB:]),
                                    range(2)))
    finally:
        for up in ups:
            up.close()
    for answer, body in zip(answers, bodies, strict=True):
        assert answer is not None
        assert answer.status_code == 200, answer
        assert answer.headers["etag"] == etag_of(body)
    (listed,) = list_parts_xml(client, coffer, key, upload_id)
    assert listed[0] == 1
    (winner,) = [b for b in bodies if etag_of(b) == listed[1]]
    assert listed == (1, etag_of(winner), len(winner))
    (added,) = blob_names(data_dir) - before
    assert stored_blob_ids(data_dir, upload_id) == {1: added}
    check_blobs_hold(data_dir, upload_id, {1: winner})
    assert tmp_files(data_dir) == []


def test_list_parts_during_reuploads_sees_exactly_one_part(mp):
    client, coffer, data_dir = mp.client, mp.coffer, mp.srv.data_dir
    key = "reuploaded.bin"
    upload_id = initiate(client, coffer, key)
    before = blob_names(data_dir)
    other = os.urandom(100 * KiB)
    put_part(client, coffer, key, upload_id, 2, other)
    first = os.urandom(128 * KiB)
    etags = {put_part(client, coffer, key, upload_id, 1, first)}
    seen: list[list[tuple[int, str, int]]] = []
    stop = threading.Event()

    def reader() -> None:
        reader_client = SignedClient(client.base_url, client.secret_id, client.secret_key)
        try:
            while not stop.is_set():
                seen.append(list_parts_xml(reader_client, coffer, key, upload_id))
        finally:
            reader_client.close()

    sizes = {128 * KiB}
    with ThreadPoolExecutor(1) as pool:
        reading = pool.submit(reader)
        try:
            for round_ in range(30):
                body = os.urandom(128 * KiB + round_ + 1)
                etags.add(put_part(client, coffer, key, upload_id, 1, body))
                sizes.add(len(body))
        finally:
            stop.set()
            reading.result()
    assert len(seen) >= 10, len(seen)
    for listing in seen:
        ones = [p for p in listing if p[0] == 1]
        assert len(ones) == 1, listing
        assert ones[0][1] in etags and ones[0][2] in sizes, listing
        assert [p for p in listing if p[0] != 1] == [(2, etag_of(other), len(other))]
    assert list_parts_xml(client, coffer, key, upload_id) == parts_of({1: body, 2: other})
    assert len(blob_names(data_dir) - before) == 2
    check_blobs_hold(data_dir, upload_id, {1: body, 2: other})
    assert tmp_files(data_dir) == []


# -- 5. two server processes on one data directory ------------------------------------------


def test_two_processes_share_an_upload(two_servers):
    a, b = two_servers
    a.start()
    ca = new_client(a)
    b.start()
    cb = SignedClient(b.base_url, ca.secret_id, ca.secret_key)
    coffer, key = f"mp-shared-{OWN_APP_ID}", "shared.bin"
    ca.make_coffer(coffer)
    upload_id = initiate(ca, coffer, key)
    data: dict[int, bytes] = {}
    for number in range(1, 7):
        data[number] = os.urandom(200 * KiB + number)
        put_part((ca, cb)[number % 2], coffer, key, upload_id, number, data[number])
    assert list_parts_xml(ca, coffer, key, upload_id) == parts_of(data)
    assert list_parts_xml(cb, coffer, key, upload_id) == parts_of(data)
    assert listed_uploads(cb, coffer) == [(key, upload_id)]
    check_error(cb.put(f"/{coffer}/{key}", content=b"x"), 409, "ObjectAlreadyUploading")

    # A part streaming on A while B starts: B's recovery must leave A's live write alone.
    b.stop()
    data[7] = os.urandom(4 * MiB)
    up = raw_part(ca, coffer, key, upload_id, 7, len(data[7]))
    try:
        up.send(data[7][: 2 * MiB])
        tmp = wait_part_streaming(a.data_dir, upload_id, MiB)
        (row,) = [r for r in part_rows(a.data_dir, upload_id) if r[1] == "writing"]
        assert row == (7, "writing", tmp.name)
        (holder,) = db_rows(a.data_dir, "SELECT holder FROM parts WHERE blob_id = ?", tmp.name)
        assert holder[0].split(":")[1] == str(a.proc.pid)
        b.start()
        assert tmp.exists()
        assert [r for r in part_rows(a.data_dir, upload_id) if r[1] == "writing"] == [row]
        # Still listed as it was: the streaming part is not a part yet.
        assert list_parts_xml(cb, coffer, key, upload_id) == parts_of(
            {n: d for n, d in data.items() if n != 7})
        answer = finish_body(up, data[7][2 * MiB:])
    finally:
        up.close()
    assert answer is not None
    assert answer.status_code == 200, answer
    assert answer.headers["etag"] == etag_of(data[7])
    assert list_parts_xml(cb, coffer, key, upload_id) == parts_of(data)
    assert list_parts_xml(ca, coffer, key, upload_id) == parts_of(data)
    check_blobs_hold(a.data_dir, upload_id, data)
    assert len(blob_files(a.data_dir)) == len(data)
    assert tmp_files(a.data_dir) == []
    ca.close()
    cb.close()


# -- 6. a stalled part write ----------------------------------------------------------------


def test_stalled_part_is_dropped_and_the_upload_stays_usable(tmp_path):
    srv = ServerProcess(tmp_path / "data", env={"DATACOFFER_BODY_TIMEOUT": "1"})
    srv.start()
    try:
        client = new_client(srv)
        coffer, key = f"mp-stall-{OWN_APP_ID}", "stalled.bin"
        client.make_coffer(coffer)
        upload_id = initiate(client, coffer, key)
        data = {1: os.urandom(300 * KiB)}
        put_part(client, coffer, key, upload_id, 1, data[1])

        up = raw_part(client, coffer, key, upload_id, 2, 1000)
        try:
            up.send(b"x" * 10)
            started = time.monotonic()
            answer = up.response()
            waited = time.monotonic() - started
        finally:
            up.close()
        check_error(answer, 400, "InvalidArgument")
        assert b"No body bytes arrived for 1 seconds" in answer.content
        assert 0.9 <= waited < 10
        assert tmp_files(srv.data_dir) == []
        assert [s for _, s, _ in part_rows(srv.data_dir, upload_id)] == ["stored"]
        assert list_parts_xml(client, coffer, key, upload_id) == parts_of(data)
        assert len(blob_files(srv.data_dir)) == 1

        data[2] = os.urandom(1000)
        put_part(client, coffer, key, upload_id, 2, data[2])
        assert list_parts_xml(client, coffer, key, upload_id) == parts_of(data)
        check_blobs_hold(srv.data_dir, upload_id, data)
        assert listed_uploads(client, coffer) == [(key, upload_id)]
        check_error(client.put(f"/{coffer}/{key}", content=b"x"), 409, "ObjectAlreadyUploading")
        assert db_rows(srv.data_dir, "SELECT initiator_uin FROM uploads") == [(OWN_UIN,)]
        client.close()
    finally:
        srv.stop()


def test_discarded_part_left_by_a_crash_is_purged_at_start(tmp_path):
    """A replaced, unlisted or aborted part is first marked discarded, then its file and row
    go. Staged as a crash between the two (a discarded row whose file is still in blobs/): the
    next start removes both, and the upload is untouched."""
    srv = ServerProcess(tmp_path / "data")
    srv.start()
    client = new_client(srv)
    coffer, key = f"mp-purge-{OWN_APP_ID}", "p.bin"
    client.make_coffer(coffer)
    upload_id = initiate(client, coffer, key)
    put_part(client, coffer, key, upload_id, 1, b"kept")
    srv.stop()
    blob_id = secrets.token_hex(16)
    path = srv.data_dir / "regions" / "ap-tianjin" / "blobs" / blob_id[:2] / blob_id
    path.write_bytes(b"replaced part")
    db = sqlite3.connect(srv.data_dir / "metadata.db")
    db.execute("INSERT INTO parts (blob_id, upload_id, part_number, state, size, etag, sha256,"
               " created_ms, holder, lease_until_ms) VALUES (?, ?, 1, 'discarded', 13, '', '',"
               " 0, '', 0)", (blob_id, upload_id))
    db.commit()
    db.close()
    srv.start()
    try:
        assert not path.exists()
        assert [state for _, state, _ in part_rows(srv.data_dir, upload_id)] == ["stored"]
        assert list_parts_xml(client, coffer, key, upload_id) == parts_of({1: b"kept"})
        client.close()
    finally:
        srv.stop()
