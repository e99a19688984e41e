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
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from datacoffer.client import Client, errors
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
    fetch,
    md5_hex,
    new_sdk,
    own_server,
    tmp_files,
    wait_until,
)

KiB = 1024


# -- helpers --------------------------------------------------------------------------------


def etag_of(data: bytes) -> str:
    """The ETag header of an answer to raw UploadPart of `data`."""
    return f'"{hashlib.md5(data).hexdigest()}"'


def initiate(sdk: Client, coffer: str, key: str) -> str:
    upload = sdk.initiate_multipart_upload(coffer, key)
    assert (upload.coffer, upload.key) == (coffer, key)
    assert len(upload.upload_id) >= 32
    return upload.upload_id


def put_part(sdk: Client, coffer: str, key: str, upload_id: str, number: int,
             data: bytes) -> str:
    """UploadPart, expected to succeed; returns the ETag answered (checked against the MD5)."""
    part = sdk.upload_part(coffer, key, upload_id, number, data, length=len(data))
    assert part.etag == md5_hex(data), number
    return part.etag


def raw_part(client: SignedClient, coffer: str, key: str, upload_id: str, number: int,
             length: int) -> RawUpload:
    """An UploadPart whose body the test sends piecewise."""
    return RawUpload(client, f"/{coffer}/{key}", length,
                     params={"partNumber": str(number), "uploadId": upload_id})


def listed_parts(sdk: Client, coffer: str, key: str,
                 upload_id: str) -> list[tuple[int, str, int]]:
    """ListParts: every part as (PartNumber, ETag, Size), in the order listed."""
    listing = sdk.list_parts(coffer, key, upload_id)
    assert listing.upload_id == upload_id
    assert not listing.is_truncated
    return [(p.number, p.etag, p.size) for p in listing.parts]


def parts_of(data: dict[int, bytes]) -> list[tuple[int, str, int]]:
    """What ListParts should show for these part bodies."""
    return [(n, md5_hex(body), len(body)) for n, body in sorted(data.items())]


def listed_uploads(sdk: Client, coffer: str) -> list[tuple[str, str]]:
    """ListMultipartUploads: (Key, UploadId) of every upload in progress."""
    listing = sdk.list_multipart_uploads(coffer)
    assert not listing.is_truncated
    return [(u.key, u.upload_id) for u in listing.uploads]


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
        sdk = new_sdk(srv)
        client = SignedClient.of(sdk)
        coffer, key = f"mp-crash-{OWN_APP_ID}", "crashed/upload.bin"
        sdk.create_coffer(coffer, ["ap-tianjin"])
        upload_id = initiate(sdk, coffer, key)
        data = {1: os.urandom(MiB + 17), 2: os.urandom(300 * KiB + 3)}
        etags = {n: put_part(sdk, coffer, key, upload_id, n, body)
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

        assert listed_parts(sdk, coffer, key, upload_id) == [
            (1, etags[1], len(data[1])), (2, etags[2], len(data[2]))]
        assert listed_uploads(sdk, coffer) == [(key, upload_id)]
        assert tmp_files(srv.data_dir) == []
        assert part_rows(srv.data_dir, upload_id) == [
            (n, "stored", b) for n, b in sorted(stored_blob_ids(srv.data_dir, upload_id).items())]
        assert blob_names(srv.data_dir) == set(stored_blob_ids(srv.data_dir, upload_id).values())
        assert len(blob_files(srv.data_dir)) == 2
        check_blobs_hold(srv.data_dir, upload_id, data)

        data[3] = os.urandom(2 * MiB + 5)
        put_part(sdk, coffer, key, upload_id, 3, data[3])
        assert listed_parts(sdk, coffer, key, upload_id) == parts_of(data)
        assert len(blob_files(srv.data_dir)) == 3
        check_blobs_hold(srv.data_dir, upload_id, data)

        # The upload still holds its key.
        with pytest.raises(errors.ObjectAlreadyUploading):
            sdk.put_object(coffer, key, b"x")
        with pytest.raises(errors.ObjectAlreadyUploading):
            sdk.initiate_multipart_upload(coffer, key)
        assert listed_uploads(sdk, coffer) == [(key, upload_id)]
        client.close()
        sdk.close()
    finally:
        srv.stop()


# -- 2. a replaced part leaves no file ------------------------------------------------------


def test_replaced_part_leaves_one_blob_file(mp):
    sdk, coffer, data_dir = mp.sdk, mp.coffer, mp.srv.data_dir
    key = "replaced.bin"
    upload_id = initiate(sdk, coffer, key)
    before = blob_names(data_dir)
    bodies = [os.urandom(200 * KiB), os.urandom(MiB + 1), b"third and last body"]
    for body in bodies:
        put_part(sdk, coffer, key, upload_id, 1, body)
        assert listed_parts(sdk, coffer, key, upload_id) == parts_of({1: body})
        (added,) = blob_names(data_dir) - before
        assert blob_names(data_dir) - {added} == before
        assert stored_blob_ids(data_dir, upload_id) == {1: added}
        check_blobs_hold(data_dir, upload_id, {1: body})
    assert tmp_files(data_dir) == []
    (path,) = [p for p in blob_files(data_dir) if p.name not in before]
    assert path.read_bytes() == bodies[-1]


# -- 3. an aborted upload leaves no file ----------------------------------------------------


def test_abort_with_a_part_streaming_leaves_no_file(mp):
    client, sdk, coffer, data_dir = mp.client, mp.sdk, mp.coffer, mp.srv.data_dir
    key = "aborted.bin"
    before = blob_names(data_dir)
    upload_id = initiate(sdk, coffer, key)
    data = {1: os.urandom(MiB), 2: os.urandom(64 * KiB), 4: b"four"}
    for number, body in data.items():
        put_part(sdk, coffer, key, upload_id, number, body)
    assert len(blob_names(data_dir) - before) == 3

    held = os.urandom(4 * MiB)
    up = raw_part(client, coffer, key, upload_id, 3, len(held))
    try:
        up.send(held[: 2 * MiB])
        wait_part_streaming(data_dir, upload_id, MiB)
        sdk.abort_multipart_upload(coffer, key, upload_id)
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
    assert (key, upload_id) not in listed_uploads(sdk, coffer)
    with pytest.raises(errors.NoSuchUpload):
        sdk.list_parts(coffer, key, upload_id)
    with pytest.raises(errors.NoSuchUpload):
        sdk.upload_part(coffer, key, upload_id, 5, b"late", length=4)
    with pytest.raises(errors.NoSuchUpload):
        sdk.abort_multipart_upload(coffer, key, upload_id)
    assert blob_names(data_dir) == before
    assert tmp_files(data_dir) == []
    # The key is free again.
    sdk.put_object(coffer, key, b"a plain object now")
    assert fetch(sdk, coffer, key) == b"a plain object now"


def test_part_writer_killed_after_an_abort_leaves_nothing(tmp_path):
    """Abort while a part streams keeps that write's row (the upload is marked aborted), so
    when the server then dies, the next start reclaims the dead write: no row, no file."""
    srv = ServerProcess(tmp_path / "data")
    srv.start()
    try:
        sdk = new_sdk(srv)
        client = SignedClient.of(sdk)
        coffer, key = f"mp-abort-kill-{OWN_APP_ID}", "k.bin"
        sdk.create_coffer(coffer, ["ap-tianjin"])
        upload_id = initiate(sdk, coffer, key)
        put_part(sdk, coffer, key, upload_id, 1, b"stored part")
        held = os.urandom(4 * MiB)
        up = raw_part(client, coffer, key, upload_id, 2, len(held))
        try:
            up.send(held[: 2 * MiB])
            wait_part_streaming(srv.data_dir, upload_id, MiB)
            sdk.abort_multipart_upload(coffer, key, upload_id)
            assert [state for _, state, _ in part_rows(srv.data_dir, upload_id)] == ["writing"]
            assert db_rows(srv.data_dir, "SELECT state FROM uploads WHERE upload_id = ?",
                           upload_id) == [("aborted",)]
            with pytest.raises(errors.NoSuchUpload):
                sdk.list_parts(coffer, key, upload_id)
            assert (key, upload_id) not in listed_uploads(sdk, coffer)
            srv.kill()
        finally:
            up.close()
        srv.start()
        assert part_rows(srv.data_dir, upload_id) == []
        assert db_rows(srv.data_dir, "SELECT count(*) FROM uploads WHERE upload_id = ?",
                       upload_id) == [(0,)]
        assert tmp_files(srv.data_dir) == [] and blob_names(srv.data_dir) == set()
        sdk.put_object(coffer, key, b"free")
        assert fetch(sdk, coffer, key) == b"free"
        client.close()
        sdk.close()
    finally:
        srv.stop()


# -- 4. concurrency -------------------------------------------------------------------------


def test_parallel_parts_are_all_stored(mp):
    sdk, coffer, data_dir = mp.sdk, mp.coffer, mp.srv.data_dir
    key = "parallel.bin"
    upload_id = initiate(sdk, coffer, key)
    before = blob_names(data_dir)
    data = {n: os.urandom(256 * KiB + n) for n in range(1, 9)}
    barrier = threading.Barrier(len(data))

    def one(number: int):
        barrier.wait()
        return sdk.upload_part(coffer, key, upload_id, number, data[number],
                               length=len(data[number]))

    with ThreadPoolExecutor(len(data)) as pool:
        answers = dict(zip(data, pool.map(one, data), strict=True))
    for number, part in answers.items():
        assert (part.number, part.etag) == (number, md5_hex(data[number]))
    assert listed_parts(sdk, coffer, key, upload_id) == parts_of(data)
    assert len(blob_names(data_dir) - before) == 8
    assert blob_names(data_dir) - set(stored_blob_ids(data_dir, upload_id).values()) == before
    check_blobs_hold(data_dir, upload_id, data)
    assert tmp_files(data_dir) == []


def test_two_concurrent_uploads_of_one_part_number(mp):
    """Both part writes are streaming at once (each has its tmp file) before either ends:
    both are acknowledged, the one committed last is the part, the other's file is gone."""
    client, sdk, coffer, data_dir = mp.client, mp.sdk, mp.coffer, mp.srv.data_dir
    key = "same-part.bin"
    upload_id = initiate(sdk, coffer, key)
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
    (listed,) = listed_parts(sdk, coffer, key, upload_id)
    assert listed[0] == 1
    (winner,) = [b for b in bodies if md5_hex(b) == listed[1]]
    assert listed == (1, md5_hex(winner), len(winner))
    (added,) = blob_names(data_dir) - before
    assert stored_blob_ids(data_dir, upload_id) == {1: added}
    check_blobs_hold(data_dir, upload_id, {1: winner})
    assert tmp_files(data_dir) == []


def test_list_parts_during_reuploads_sees_exactly_one_part(mp):
    sdk, coffer, data_dir = mp.sdk, mp.coffer, mp.srv.data_dir
    key = "reuploaded.bin"
    upload_id = initiate(sdk, coffer, key)
    before = blob_names(data_dir)
    other = os.urandom(100 * KiB)
    put_part(sdk, coffer, key, upload_id, 2, other)
    first = os.urandom(128 * KiB)
    etags = {put_part(sdk, coffer, key, upload_id, 1, first)}
    seen: list[list[tuple[int, str, int]]] = []
    stop = threading.Event()

    def reader() -> None:  # the SDK client is thread-safe: both threads share it
        while not stop.is_set():
            seen.append(listed_parts(sdk, coffer, key, upload_id))

    sizes = {128 * KiB}
    with ThreadPoolExecutor(1) as pool:
        reading = pool.submit(reader)
        try:
            for round_ in range(30):
                body = os.urandom(128 * KiB + round_ + 1)
                etags.add(put_part(sdk, coffer, key, upload_id, 1, body))
                sizes.add(len(body))
        finally:
            stop.set()
            reading.result()
    assert len(seen) >= 10, len(seen)
    for listing in seen:
        ones = [p for p in listing if p[0] == 1]
        assert len(ones) == 1, listing
        assert ones[0][1] in etags and ones[0][2] in sizes, listing
        assert [p for p in listing if p[0] != 1] == [(2, md5_hex(other), len(other))]
    assert listed_parts(sdk, coffer, key, upload_id) == parts_of({1: body, 2: other})
    assert len(blob_names(data_dir) - before) == 2
    check_blobs_hold(data_dir, upload_id, {1: body, 2: other})
    assert tmp_files(data_dir) == []


# -- 5. two server processes on one data directory ------------------------------------------


def test_two_processes_share_an_upload(two_servers):
    a, b = two_servers
    a.start()
    sa = new_sdk(a)
    b.start()
    sb = b.sdk_like(sa)
    ca = SignedClient.of(sa)  # for the part the test paces itself
    coffer, key = f"mp-shared-{OWN_APP_ID}", "shared.bin"
    sa.create_coffer(coffer, ["ap-tianjin"])
    upload_id = initiate(sa, coffer, key)
    data: dict[int, bytes] = {}
    for number in range(1, 7):
        data[number] = os.urandom(200 * KiB + number)
        put_part((sa, sb)[number % 2], coffer, key, upload_id, number, data[number])
    assert listed_parts(sa, coffer, key, upload_id) == parts_of(data)
    assert listed_parts(sb, coffer, key, upload_id) == parts_of(data)
    assert listed_uploads(sb, coffer) == [(key, upload_id)]
    with pytest.raises(errors.ObjectAlreadyUploading):
        sb.put_object(coffer, key, b"x")

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
        assert listed_parts(sb, coffer, key, upload_id) == parts_of(
            {n: d for n, d in data.items() if n != 7})
        answer = finish_body(up, data[7][2 * MiB:])
    finally:
        up.close()
    assert answer is not None
    assert answer.status_code == 200, answer
    assert answer.headers["etag"] == etag_of(data[7])
    assert listed_parts(sb, coffer, key, upload_id) == parts_of(data)
    assert listed_parts(sa, coffer, key, upload_id) == parts_of(data)
    check_blobs_hold(a.data_dir, upload_id, data)
    assert len(blob_files(a.data_dir)) == len(data)
    assert tmp_files(a.data_dir) == []
    for c in (ca, sa, sb):
        c.close()


# -- 6. a stalled part write ----------------------------------------------------------------


def test_stalled_part_is_dropped_and_the_upload_stays_usable(tmp_path):
    srv = ServerProcess(tmp_path / "data", env={"DATACOFFER_BODY_TIMEOUT": "1"})
    srv.start()
    try:
        sdk = new_sdk(srv)
        client = SignedClient.of(sdk)
        coffer, key = f"mp-stall-{OWN_APP_ID}", "stalled.bin"
        sdk.create_coffer(coffer, ["ap-tianjin"])
        upload_id = initiate(sdk, coffer, key)
        data = {1: os.urandom(300 * KiB)}
        put_part(sdk, coffer, key, upload_id, 1, data[1])

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
        assert listed_parts(sdk, coffer, key, upload_id) == parts_of(data)
        assert len(blob_files(srv.data_dir)) == 1

        data[2] = os.urandom(1000)
        put_part(sdk, coffer, key, upload_id, 2, data[2])
        assert listed_parts(sdk, coffer, key, upload_id) == parts_of(data)
        check_blobs_hold(srv.data_dir, upload_id, data)
        assert listed_uploads(sdk, coffer) == [(key, upload_id)]
        with pytest.raises(errors.ObjectAlreadyUploading):
            sdk.put_object(coffer, key, b"x")
        assert db_rows(srv.data_dir, "SELECT initiator_uin FROM uploads") == [(OWN_UIN,)]
        client.close()
        sdk.close()
    finally:
        srv.stop()


def test_discarded_part_left_by_a_crash_is_purged_at_start(tmp_path):
    """A replaced, unlisted or aborted part is first marked discarded, then its file and row
    go. Staged as a crash between the two (a discarded row whose file is still in blobs/): the
    next start removes both, and the upload is untouched."""
    srv = ServerProcess(tmp_path / "data")
    srv.start()
    sdk = new_sdk(srv)
    coffer, key = f"mp-purge-{OWN_APP_ID}", "p.bin"
    sdk.create_coffer(coffer, ["ap-tianjin"])
    upload_id = initiate(sdk, coffer, key)
    put_part(sdk, coffer, key, upload_id, 1, b"kept")
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
        assert listed_parts(sdk, coffer, key, upload_id) == parts_of({1: b"kept"})
        sdk.close()
    finally:
        srv.stop()
