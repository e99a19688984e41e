"""Integrity: the scrubber and checked reads (service.md "Durability" and "Scrub"; core/scrub.py,
core/integrity.py, core/reading.py, Objects.read, core/copies.py `report_damage`).

Every stored object carries its SHA-256; a damaged or missing copy is never served silently, it
is reported (log, metrics, `admin status`) and repaired from a good region. Covered, against
server processes of this module (never the shared server: a scrub pass checks every coffer of
its server, a replication pass copies whatever any coffer is owed):

1. `admin run scrub` on a `serve --no-background` server (`scrub_rate = 0`): a flipped byte, a
   deleted file (of the primary and of a secondary copy) and a cut-short file are found,
   reported ("Findings", the `integrity_findings` rows, `admin status` "Integrity", the
   /metrics gauges) and repaired at once: afterwards the file is byte-identical to the good
   copies and a second pass finds nothing. The same for an encrypted coffer (EncryptType 1)
   and for multipart objects (one damaged part in one region).
2. A GetObject that meets a damaged copy is served, with exactly the right bytes, from another
   region: the primary's copy (a > 1 MiB streamed read, a <= 1 MiB one, an encrypted one), a
   secondary's copy addressed by Host, a Range over the damaged chunk, a partNumber read of a
   damaged part, a multipart object damaged in another part in each region (each part is read
   from the addressed region first, then from the others). The server logs the damage ("found
   by read") and where it read instead, a finding and a queue entry are recorded, and `admin
   run replication` repairs the copy.
3. What cannot be repaired: damage in every copy (a small GET is `500 InternalError`, a large
   one is cut off after the last good chunk, never a damaged byte; the scrub says Repaired
   false; the queue entry's failure names every bad source; restoring the files heals it all),
   and a single-region coffer (nothing to copy from, so nothing is queued: the finding stays
   open until a scrub finds the copy good again, or its object expires: the lifecycle closes
   its findings); damage met in an object marked "expiring" is not reported at all.
4. Objects whose KMS key is disabled are counted as Skipped, not as damage; but a damaged
   wrapped data key (EncryptType 1, and EncryptType 2 when the KMS key itself checks out) is
   damage: read from another region, reported and repaired.
5. The background scrubber (`scrub_interval = 1`) repairs a copy by itself and logs its passes;
   one process of an installation at a time does the background pass (two servers on one
   data directory: the "scrub" lease); `scrub_rate` paces `admin run scrub`
   (DATACOFFER_SCRUB_RATE, a lower bound only).
6. The settings' checks and the help text.

Every test leaves its server's copies healthy and its queue empty (the `damaged` context puts
the original files back whatever happens), so that each scrub's whole document can be asserted.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from datacoffer import signing
from datacoffer.config import ConfigError, load
from datacoffer.core.clock import iso8601
from datacoffer.core.copies import report_damage
from datacoffer.core.integrity import check_file
from datacoffer.core.lifecycle import DAY_MS
from datacoffer.core.throttle import Throttle
from datacoffer.meta.db import Database
from tests.serverproc import BIN, ServerProcess
from tests.test_api_coffers import assert_error
from tests.test_lifecycle_sweep import Stored, change, query
from tests.test_replication import (
    ALL,
    GUANGZHOU,
    SHANGHAI,
    TIANJIN,
    MiB,
    World,
    assert_files,
    assert_served,
    blob_file,
    copied,
    flip_byte,
    queue_of,
    random_bytes,
    run_pass,
    start,
    wait_until,
)

SHA_DIFFERS = "its SHA-256 differs from the recorded one"
MISSING = "the file is missing"


# -- servers -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quiet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """`serve --no-background`: nothing is checked or copied but by `admin run scrub` and
    `admin run replication`, which read as fast as the disks go (`scrub_rate = 0`)."""
    srv = start(tmp_path_factory.mktemp("scrub-quiet"), "scrub_rate = 0\n", background=False)
    world = World.create(srv)
    yield world
    world.close()
    srv.stop()


@pytest.fixture(scope="module")
def scrubbing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """A server with its background workers: a scrub pass every second, unpaced, and the
    replication worker."""
    srv = start(tmp_path_factory.mktemp("scrub-bg"), "scrub_interval = 1\nscrub_rate = 0\n",
                background=True)
    world = World.create(srv)
    yield world
    world.close()
    srv.stop()


# -- damage and what was recorded of it ------------------------------------------------------


@dataclass
class Damage:
    blob: str
    path: Path
    original: bytes
    #: the object expired: its files are gone for good, none is put back
    expired: bool = False

    def restore(self) -> None:
        if self.expired:
            return
        if not self.path.exists() or self.path.read_bytes() != self.original:
            self.path.write_bytes(self.original)


@contextlib.contextmanager
def damaged(world: World, obj: Stored, region: str, how: str = "flip", *, part: int = 0,
            offset: int = 100) -> Iterator[Damage]:
    """Damage `region`'s file of the object's blob number `part`: "flip" the byte at `offset`,
    "delete" the file or "cut" it to half its length. On leaving, the original file is put
    back and the object's queue entries dropped, so that whatever a test leaves behind, the
    server's later passes see healthy copies only."""
    blob = obj.blob_ids[part]
    path = blob_file(world, region, blob)
    damage = Damage(blob, path, path.read_bytes())
    if how == "flip":
        flip_byte(path, offset)
    elif how == "delete":
        path.unlink()
    else:
        assert how == "cut"
        path.write_bytes(damage.original[:len(damage.original) // 2])
    try:
        yield damage
    finally:
        damage.restore()
        change(world.db, "DELETE FROM replication_queue WHERE object_id = ?", obj.id)


def chunk_offset(world: World, obj: Stored, index: int) -> int:
    """Where the ciphertext of chunk `index` of an encrypted blob starts (after its header,
    64 KiB chunks with a 16-byte tag each: crypto/envelope.py)."""
    head = blob_file(world, TIANJIN, obj.blob_ids[0]).read_bytes()[:6]
    (header_length,) = struct.unpack(">H", head[4:6])
    return header_length + index * (64 * 1024 + 16)


def replicate(world: World, copies: int) -> None:
    doc = run_pass(world)
    assert (doc["Copied"], doc["Failed"], doc["Pending"]) == (copies, 0, 0), doc


def totals(world: World, skipped: tuple[Stored, ...] = ()) -> dict[str, int]:
    """What a scrub pass should check: the stored objects (but `skipped`), their copies (one
    per region holding one) and the bytes of those copies."""
    rows = query(world.db, "SELECT o.id, o.size, count(c.region) FROM objects o "
                           "JOIN object_copies c ON c.object_id = o.id "
                           "WHERE o.state = 'stored' GROUP BY o.id")
    rows = [r for r in rows if r[0] not in {s.id for s in skipped}]
    return {"Objects": len(rows), "Copies": sum(r[2] for r in rows),
            "Bytes": sum(r[1] * r[2] for r in rows)}


def scrub(world: World, findings: list[dict[str, Any]], *,
          skipped: tuple[Stored, ...] = ()) -> None:
    """`admin run scrub`: its whole document, and these findings in it."""
    expected = {**totals(world, skipped), "Skipped": len(skipped), "Findings": findings}
    doc = world.srv.admin("run", "scrub")
    assert list(doc) == ["Objects", "Copies", "Bytes", "Skipped", "Findings"]
    assert doc == expected


def finding(obj: Stored, region: str, blob: str, problem: str,
            repaired: bool = True) -> dict[str, Any]:
    """A scrub's entry of a damaged copy."""
    return {"Coffer": obj.coffer, "Key": obj.key, "Region": region,
            "Problem": f"blob {blob}: {problem}", "Repaired": repaired}


def recorded(world: World, obj: Stored) -> list[tuple[str, str, str, str, bool]]:
    """The object's `integrity_findings` rows, oldest first: (found by, region, blob,
    problem, repaired); a repair is never earlier than its finding."""
    rows = query(world.db, "SELECT found_by, region, blob_id, problem, found_ms, repaired_ms "
                           "FROM integrity_findings WHERE object_id = ? ORDER BY id", obj.id)
    assert all(repaired is None or repaired >= found for *_, found, repaired in rows), rows
    return [(by, region, blob, problem, repaired is not None)
            for by, region, blob, problem, _, repaired in rows]


def integrity(world: World) -> dict[str, Any]:
    """`admin status` "Integrity", checked against /metrics and metadata.db."""
    doc: dict[str, Any] = world.srv.admin("status")["Integrity"]
    assert list(doc) == ["Findings", "Unrepaired", "Latest"]
    assert (doc["Findings"], doc["Unrepaired"]) == query(
        world.db, "SELECT count(*), count(*) FILTER (WHERE repaired_ms IS NULL) "
                  "FROM integrity_findings")[0]
    assert len(doc["Latest"]) == min(10, doc["Findings"])
    r = httpx.get(world.srv.base_url + "/metrics", timeout=10)
    assert r.status_code == 200, r.text
    gauges = dict(line.split(" ", 1) for line in r.text.splitlines()
                  if line.startswith("datacoffer_integrity_"))
    assert gauges == {"datacoffer_integrity_findings": f"{doc['Findings']:.1f}",
                      "datacoffer_integrity_unrepaired": f"{doc['Unrepaired']:.1f}"}
    return doc


def latest_of(world: World, obj: Stored) -> dict[str, Any]:
    """`admin status`'s form of the object's newest finding."""
    found, by, region, problem, repaired = query(
        world.db, "SELECT found_ms, found_by, region, problem, repaired_ms FROM "
                  "integrity_findings WHERE object_id = ? ORDER BY id DESC LIMIT 1", obj.id)[0]
    return {"Found": iso8601(found), "FoundBy": by, "Coffer": obj.coffer, "Key": obj.key,
            "Region": region, "Problem": problem,
            "Repaired": iso8601(repaired) if repaired else None}


def read_problem(region: str, blob: str, what: str) -> str:
    """What a read reports of a damaged chunk."""
    return f"blob {blob} in region {region}: {what}"


def assert_read_logged(world: World, obj: Stored, region: str, blob: str, problem: str,
                       *others: str) -> None:
    """The server's log says what the read found and which of `others` it read instead."""
    text = world.srv.log()
    assert (f"ERROR datacoffer.integrity: damaged copy of {obj.coffer}/{obj.key} in region "
            f"{region} (blob {blob}, found by read): {problem}\n") in text
    assert re.search(rf"WARNING datacoffer\.objects: reading {blob} from region "
                     rf"({'|'.join(others)}) instead\n", text), text[-2000:]


def get(world: World, obj: Stored, region: str | None = None, **kw: Any) -> httpx.Response:
    """A signed GET of the object; its Host names `region`, or none (the primary)."""
    headers = {"Host": f"cdcs.{region}.example.com"} if region else {}
    headers.update(kw.pop("headers", {}))
    return world.raw.get(f"/{obj.coffer}/{obj.key}", headers=headers, **kw)


def assert_got(r: httpx.Response, status: int, data: bytes, region: str) -> None:
    assert (r.status_code, r.headers["x-cdcs-coffer-region"]) == (status, region), r.text
    assert r.headers["content-length"] == str(len(data))
    assert r.content == data


# -- 1. the scrub finds, reports and repairs --------------------------------------------------


def test_scrub_repairs_a_flipped_byte(quiet: World) -> None:
    coffer = quiet.coffer(TIANJIN, SHANGHAI, GUANGZHOU)
    obj = quiet.put(coffer, "flip.bin", random_bytes(3000, 1))
    replicate(quiet, 2)
    before = integrity(quiet)
    with damaged(quiet, obj, SHANGHAI) as d:
        scrub(quiet, [finding(obj, SHANGHAI, d.blob, SHA_DIFFERS)])
        assert_files(quiet, obj, TIANJIN, ALL)
        assert blob_file(quiet, SHANGHAI, d.blob).read_bytes() == d.original
        assert recorded(quiet, obj) == [("scrub", SHANGHAI, d.blob, SHA_DIFFERS, True)]
        assert queue_of(quiet, obj) == {}
        after = integrity(quiet)
        assert (after["Findings"], after["Unrepaired"]) == (before["Findings"] + 1,
                                                             before["Unrepaired"])
        assert after["Latest"][0] == latest_of(quiet, obj)
        assert after["Latest"][0]["FoundBy"] == "scrub"
        assert after["Latest"][0]["Repaired"] is not None
        scrub(quiet, [])


def test_scrub_repairs_missing_and_cut_copies(quiet: World) -> None:
    """A deleted primary copy, a deleted secondary one, a secondary cut to half its length."""
    coffer = quiet.coffer(TIANJIN, SHANGHAI, GUANGZHOU)
    lost, gone, short = (quiet.put(coffer, key, random_bytes(3000, n))
                         for n, key in enumerate(("lost-primary", "lost-secondary", "short"), 2))
    replicate(quiet, 6)
    with contextlib.ExitStack() as stack:
        d1 = stack.enter_context(damaged(quiet, lost, TIANJIN, "delete"))
        d2 = stack.enter_context(damaged(quiet, gone, GUANGZHOU, "delete"))
        d3 = stack.enter_context(damaged(quiet, short, SHANGHAI, "cut"))
        cut = "it holds 1500 bytes instead of 3000"
        scrub(quiet, [finding(lost, TIANJIN, d1.blob, MISSING),
                      finding(gone, GUANGZHOU, d2.blob, MISSING),
                      finding(short, SHANGHAI, d3.blob, cut)])
        for obj, region, d, problem in ((lost, TIANJIN, d1, MISSING),
                                        (gone, GUANGZHOU, d2, MISSING),
                                        (short, SHANGHAI, d3, cut)):
            assert_files(quiet, obj, TIANJIN, ALL)
            assert blob_file(quiet, region, d.blob).read_bytes() == d.original
            assert recorded(quiet, obj) == [("scrub", region, d.blob, problem, True)]
            assert queue_of(quiet, obj) == {}
        scrub(quiet, [])


def test_scrub_repairs_encrypted_and_multipart_copies(quiet: World) -> None:
    plain = quiet.coffer(TIANJIN, GUANGZHOU)
    sealed = quiet.coffer(SHANGHAI, TIANJIN, encrypt_type=1)
    parts = [random_bytes(3000, 5), random_bytes(2000, 6)]
    multi = quiet.put_multipart(plain, "multi.bin", parts)
    enc_data = random_bytes(200_000, 7)
    enc = quiet.put(sealed, "sealed.bin", enc_data)
    enc_multi = quiet.put_multipart(sealed, "sealed-multi.bin", parts)
    replicate(quiet, 3)
    with contextlib.ExitStack() as stack:
        d1 = stack.enter_context(damaged(quiet, multi, GUANGZHOU, part=1))
        d2 = stack.enter_context(damaged(quiet, enc, TIANJIN,
                                         offset=chunk_offset(quiet, enc, 2) + 5))
        d3 = stack.enter_context(damaged(quiet, enc_multi, SHANGHAI, "delete"))
        undecryptable = "it does not decrypt: chunk 2 of the encrypted blob does not decrypt"
        scrub(quiet, [finding(multi, GUANGZHOU, d1.blob, SHA_DIFFERS),
                      finding(enc, TIANJIN, d2.blob, undecryptable),
                      finding(enc_multi, SHANGHAI, d3.blob, MISSING)])
        assert_files(quiet, multi, TIANJIN, (TIANJIN, GUANGZHOU))
        for obj in (enc, enc_multi):  # the replicas are the primary's ciphertext
            assert_files(quiet, obj, SHANGHAI, (SHANGHAI, TIANJIN))
        assert recorded(quiet, multi) == [("scrub", GUANGZHOU, d1.blob, SHA_DIFFERS, True)]
        assert recorded(quiet, enc) == [("scrub", TIANJIN, d2.blob, undecryptable, True)]
        assert recorded(quiet, enc_multi) == [("scrub", SHANGHAI, d3.blob, MISSING, True)]
        assert_served(quiet, multi, b"".join(parts), TIANJIN, GUANGZHOU)
        assert_served(quiet, enc, enc_data, SHANGHAI, TIANJIN)
        assert_served(quiet, enc_multi, b"".join(parts), SHANGHAI, TIANJIN)
        scrub(quiet, [])


# -- 2. a read that meets a damaged copy -------------------------------------------------------


def test_get_of_a_damaged_primary_copy_is_served_from_a_good_one(quiet: World) -> None:
    plain = quiet.coffer(TIANJIN, SHANGHAI, GUANGZHOU)
    sealed = quiet.coffer(TIANJIN, SHANGHAI, GUANGZHOU, encrypt_type=1)
    large_data, small_data, enc_data = (random_bytes(n, seed) for n, seed in
                                        ((MiB * 5 // 2, 8), (3000, 9), (MiB * 3 // 2, 10)))
    large = quiet.put(plain, "large.bin", large_data)
    small = quiet.put(plain, "small.bin", small_data)
    enc = quiet.put(sealed, "sealed.bin", enc_data)
    replicate(quiet, 6)
    before = integrity(quiet)
    cases = [(large, large_data, MiB + 100, "chunk 1 does not match its CRC-32"),
             (small, small_data, 100, "chunk 0 does not match its CRC-32"),
             (enc, enc_data, chunk_offset(quiet, enc, 20) + 9,
              "chunk 20 of the encrypted blob does not decrypt")]
    with contextlib.ExitStack() as stack:
        for obj, data, offset, what in cases:
            d = stack.enter_context(damaged(quiet, obj, TIANJIN, offset=offset))
            assert_got(get(quiet, obj), 200, data, TIANJIN)
            problem = read_problem(TIANJIN, d.blob, what)
            assert_read_logged(quiet, obj, TIANJIN, d.blob, problem, SHANGHAI, GUANGZHOU)
            assert recorded(quiet, obj) == [("read", TIANJIN, d.blob, problem, False)]
            ((attempts, _, error),) = queue_of(quiet, obj).values()
            assert (list(queue_of(quiet, obj)), attempts, error) == ([TIANJIN], 0, "")
        now = integrity(quiet)
        assert (now["Findings"], now["Unrepaired"]) == (before["Findings"] + 3,
                                                         before["Unrepaired"] + 3)
        assert now["Latest"][:3] == [latest_of(quiet, o) for o in (enc, small, large)]

        doc = run_pass(quiet)
        assert (doc["Copied"], doc["Failed"], doc["Pending"]) == (3, 0, 0), doc
        assert doc["Copies"] == sorted((c for o in cases for c in copied(quiet, o[0], SHANGHAI,
                                                                         TIANJIN)),
                                       key=lambda c: (c["Coffer"], c["Key"]))
        for obj, data, *_ in cases:
            assert_files(quiet, obj, SHANGHAI, ALL)
            assert [row[-1] for row in recorded(quiet, obj)] == [True]
            assert_got(get(quiet, obj), 200, data, TIANJIN)
        assert integrity(quiet)["Unrepaired"] == before["Unrepaired"]
        scrub(quiet, [])


def test_damaged_secondary_range_and_part_reads_come_from_another_region(
        quiet: World) -> None:
    coffer = quiet.coffer(TIANJIN, SHANGHAI, GUANGZHOU)
    data = random_bytes(4000, 11)
    second = quiet.put(coffer, "second.bin", data)
    large_data = random_bytes(MiB * 5 // 2, 12)
    large = quiet.put(coffer, "large.bin", large_data)
    parts = [random_bytes(3000, 13), random_bytes(2000, 14), random_bytes(1000, 15)]
    multi = quiet.put_multipart(coffer, "multi.bin", parts)
    replicate(quiet, 6)
    with contextlib.ExitStack() as stack:
        # a read addressed to ap-shanghai, whose copy is damaged: served from the primary
        d = stack.enter_context(damaged(quiet, second, SHANGHAI))
        assert_got(get(quiet, second, SHANGHAI), 200, data, SHANGHAI)
        problem = read_problem(SHANGHAI, d.blob, "chunk 0 does not match its CRC-32")
        assert_read_logged(quiet, second, SHANGHAI, d.blob, problem, TIANJIN)
        assert recorded(quiet, second) == [("read", SHANGHAI, d.blob, problem, False)]

        # a Range across the end of chunk 0 (good) into chunk 1 (damaged in the primary)
        d = stack.enter_context(damaged(quiet, large, TIANJIN, offset=MiB + 10))
        first, last = MiB - 1000, MiB + 999
        r = get(quiet, large, headers={"Range": f"bytes={first}-{last}"})
        assert_got(r, 206, large_data[first:last + 1], TIANJIN)
        assert r.headers["content-range"] == f"bytes {first}-{last}/{len(large_data)}"
        problem = read_problem(TIANJIN, d.blob, "chunk 1 does not match its CRC-32")
        assert_read_logged(quiet, large, TIANJIN, d.blob, problem, SHANGHAI, GUANGZHOU)
        assert recorded(quiet, large) == [("read", TIANJIN, d.blob, problem, False)]

        # part 2 of a multipart object, damaged in the primary
        d = stack.enter_context(damaged(quiet, multi, TIANJIN, part=1, offset=10))
        r = get(quiet, multi, params={"partNumber": "2"})
        assert_got(r, 206, parts[1], TIANJIN)
        assert r.headers["x-cdcs-part-checksum-sha256"] == hashlib.sha256(parts[1]).hexdigest()
        problem = read_problem(TIANJIN, d.blob, "chunk 0 does not match its CRC-32")
        assert_read_logged(quiet, multi, TIANJIN, d.blob, problem, SHANGHAI, GUANGZHOU)
        assert_got(get(quiet, multi), 200, b"".join(parts), TIANJIN)
        # (the second read meets the same damage, still open: one finding, not two)
        assert recorded(quiet, multi) == [("read", TIANJIN, d.blob, problem, False)]

        for obj, region in ((second, SHANGHAI), (large, TIANJIN), (multi, TIANJIN)):
            assert list(queue_of(quiet, obj)) == [region]
        doc = run_pass(quiet)
        assert (doc["Copied"], doc["Failed"], doc["Pending"]) == (3, 0, 0), doc
        for obj in (second, large, multi):
            assert_files(quiet, obj, GUANGZHOU, ALL)
            assert all(row[-1] for row in recorded(quiet, obj))
        scrub(quiet, [])


def test_each_part_is_read_from_the_addressed_region_first(quiet: World) -> None:
    """Part 1 damaged in ap-tianjin, part 2 in ap-shanghai: a full GET from either region
    reads each part from its own region first, then from the other, so both give every
    right byte."""
    coffer = quiet.coffer(TIANJIN, SHANGHAI)
    parts = [random_bytes(3000, 29), random_bytes(2000, 30)]
    obj = quiet.put_multipart(coffer, "crossed.bin", parts)
    replicate(quiet, 1)
    crc = "chunk 0 does not match its CRC-32"
    with (damaged(quiet, obj, TIANJIN, part=0, offset=10) as first,
          damaged(quiet, obj, SHANGHAI, part=1, offset=10) as second):
        assert_got(get(quiet, obj), 200, b"".join(parts), TIANJIN)
        problem1 = read_problem(TIANJIN, first.blob, crc)
        assert_read_logged(quiet, obj, TIANJIN, first.blob, problem1, SHANGHAI)
        assert recorded(quiet, obj) == [("read", TIANJIN, first.blob, problem1, False)]
        assert_got(get(quiet, obj, SHANGHAI), 200, b"".join(parts), SHANGHAI)
        problem2 = read_problem(SHANGHAI, second.blob, crc)
        assert_read_logged(quiet, obj, SHANGHAI, second.blob, problem2, TIANJIN)
        assert recorded(quiet, obj) == [("read", TIANJIN, first.blob, problem1, False),
                                        ("read", SHANGHAI, second.blob, problem2, False)]
    scrub(quiet, [])  # the files put back: the scrub finds both copies good, and says so
    assert [row[-1] for row in recorded(quiet, obj)] == [True, True]


# -- 3. damage that cannot be repaired ----------------------------------------------------------


def received_before_cut(world: World, obj: Stored) -> bytes:
    """A streamed GET of the object that the server cuts off: the bytes that came."""
    path = f"/{obj.coffer}/{obj.key}"
    host = world.raw.base_url.split("://", 1)[1]
    fields = signing.sign(world.raw.secret_id, world.raw.secret_key, "GET", path, None,
                          {"host": host})
    got = bytearray()
    headers = {"Authorization": signing.authorization_header(fields)}
    with (pytest.raises(httpx.RemoteProtocolError, match=r"peer closed connection"),
          world.raw.http.stream("GET", path, headers=headers) as r):
        assert (r.status_code, r.headers["content-length"]) == (200, str(obj.size))
        for chunk in r.iter_raw():
            got += chunk
    return bytes(got)


def test_damage_in_every_copy_is_an_error_never_bad_bytes(quiet: World) -> None:
    coffer = quiet.coffer(TIANJIN, SHANGHAI)
    small_data, large_data = random_bytes(3000, 16), random_bytes(MiB * 5 // 2, 17)
    small = quiet.put(coffer, "small.bin", small_data)
    large = quiet.put(coffer, "large.bin", large_data)
    replicate(quiet, 2)
    before = integrity(quiet)
    with contextlib.ExitStack() as stack:
        hurt = [stack.enter_context(damaged(quiet, obj, region, offset=offset))
                for obj, offset in ((small, 100), (large, MiB + 100))
                for region in (TIANJIN, SHANGHAI)]
        assert_error(get(quiet, small), 500, "InternalError", f"{coffer}/small.bin",
                     region=TIANJIN)
        # (the good first MiB is sent, but a cut connection may lose some of what was sent)
        got = received_before_cut(quiet, large)
        assert len(got) <= MiB and large_data.startswith(got), len(got)
        for obj, chunk in ((small, 0), (large, 1)):
            blob = obj.blob_ids[0]
            what = f"chunk {chunk} does not match its CRC-32"
            assert recorded(quiet, obj) == [
                ("read", r, blob, read_problem(r, blob, what), False)
                for r in (TIANJIN, SHANGHAI)]

        # the scrub finds both copies bad, and no good source to repair them from
        scrub(quiet, [finding(obj, r, obj.blob_ids[0], SHA_DIFFERS, False)
                      for obj in (small, large) for r in (TIANJIN, SHANGHAI)])
        now = integrity(quiet)
        # per object: the two found by the read; the scrub and the attempted repairs meet the
        # same damage, still open, and add no finding of their own
        assert (now["Findings"], now["Unrepaired"]) == (before["Findings"] + 4,
                                                         before["Unrepaired"] + 4)
        doc = run_pass(quiet)
        assert (doc["Copied"], doc["Failed"], doc["Pending"]) == (0, 4, 4)
        assert [{k: f[k] for k in ("Coffer", "Key", "Region", "Error", "Attempts")}
                for f in doc["Failures"]] == [
            {"Coffer": coffer, "Key": obj.key, "Region": region,
             "Error": f"BadCopy: no region holds a good copy ({source}: {SHA_DIFFERS})",
             "Attempts": 2}
            for obj in (large, small) for region, source in ((SHANGHAI, TIANJIN),
                                                             (TIANJIN, SHANGHAI))]

        # the operator puts good files back: the next pass heals every copy and finding
        for d in hurt:
            d.restore()
        doc = run_pass(quiet)
        assert (doc["Copied"], doc["Failed"], doc["Pending"]) == (4, 0, 0), doc
        assert integrity(quiet)["Unrepaired"] == before["Unrepaired"]
        for obj, data in ((small, small_data), (large, large_data)):
            assert_files(quiet, obj, TIANJIN, (TIANJIN, SHANGHAI))
            assert_served(quiet, obj, data, TIANJIN, SHANGHAI)


def test_single_region_damage_stays_open_until_the_copy_is_good_again(quiet: World) -> None:
    """No other region holds a copy: nothing is queued (there is nothing to copy from), the
    finding stays open, and the scrub that finds the copy good again (restored from a
    backup, say) closes it."""
    coffer = quiet.coffer(GUANGZHOU)
    data = random_bytes(3000, 18)
    obj = quiet.put(coffer, "alone.bin", data)
    before = integrity(quiet)
    with damaged(quiet, obj, GUANGZHOU) as d:
        assert_error(get(quiet, obj), 500, "InternalError", f"{coffer}/alone.bin",
                     region=GUANGZHOU)
        scrub(quiet, [finding(obj, GUANGZHOU, d.blob, SHA_DIFFERS, False)])
        problem = read_problem(GUANGZHOU, d.blob, "chunk 0 does not match its CRC-32")
        # (the scrub meets the damage the read found, still open: no second finding)
        assert recorded(quiet, obj) == [("read", GUANGZHOU, d.blob, problem, False)]
        assert queue_of(quiet, obj) == {}
        now = integrity(quiet)
        assert (now["Findings"], now["Unrepaired"]) == (before["Findings"] + 1,
                                                         before["Unrepaired"] + 1)
        assert now["Latest"][0] == latest_of(quiet, obj)
        assert run_pass(quiet) == {"Copied": 0, "Failed": 0, "Pending": 0, "Copies": [],
                                   "Failures": []}

        d.restore()
        scrub(quiet, [])
        assert [row[-1] for row in recorded(quiet, obj)] == [True]
        assert integrity(quiet)["Unrepaired"] == before["Unrepaired"]
        assert_served(quiet, obj, data, GUANGZHOU)


def test_findings_of_an_object_that_expires_are_closed(quiet: World) -> None:
    """A single-region object with a damaged copy (an open finding) expires: its finding is
    closed with it (the copy is gone), Unrepaired back where it was. And damage met in an
    object already marked "expiring" (its files are being removed: a scrub or read racing
    the lifecycle pass) is no damage: report_damage records nothing and owes nothing."""
    doomed_coffer, going_coffer = quiet.coffer(GUANGZHOU), quiet.coffer(TIANJIN, SHANGHAI)
    doomed = quiet.put(doomed_coffer, "doomed.bin", random_bytes(3000, 31))
    going = quiet.put(going_coffer, "going.bin", random_bytes(3000, 32))
    replicate(quiet, 1)
    before = integrity(quiet)
    assert change(quiet.db, "UPDATE objects SET state = 'expiring' WHERE id = ?",
                  going.id) == 1
    db = Database(f"sqlite:///{quiet.db}")
    try:
        report_damage(db, going.id, SHANGHAI, going.blob_ids[0], SHA_DIFFERS, "scrub")
    finally:
        db.engine.dispose()
    assert (recorded(quiet, going), queue_of(quiet, going)) == ([], {})
    with damaged(quiet, doomed, GUANGZHOU) as d:
        assert_error(get(quiet, doomed), 500, "InternalError", f"{doomed_coffer}/doomed.bin",
                     region=GUANGZHOU)
        problem = read_problem(GUANGZHOU, d.blob, "chunk 0 does not match its CRC-32")
        assert recorded(quiet, doomed) == [("read", GUANGZHOU, d.blob, problem, False)]
        assert integrity(quiet)["Unrepaired"] == before["Unrepaired"] + 1
        quiet.sdk.put_coffer_lifecycle(doomed_coffer, 1)
        assert change(quiet.db, "UPDATE objects SET created_ms = created_ms - ? WHERE id = ?",
                      2 * DAY_MS, doomed.id) == 1
        doc = quiet.srv.admin("run", "lifecycle")
        # (the "expiring" object is finished first, not expired again)
        assert [(o["Coffer"], o["Key"]) for o in doc["Objects"]] == [
            (doomed_coffer, "doomed.bin")]
        assert not d.path.exists()
        d.expired = True
    assert recorded(quiet, doomed) == [("read", GUANGZHOU, d.blob, problem, True)]
    assert recorded(quiet, going) == []
    assert integrity(quiet)["Unrepaired"] == before["Unrepaired"]
    assert query(quiet.db, "SELECT count(*) FROM objects WHERE id IN (?, ?)", doomed.id,
                 going.id) == [(0,)]
    assert not any(blob_file(quiet, r, going.blob_ids[0]).exists() for r in ALL)
    scrub(quiet, [])


# -- damage to an encrypted blob's wrapped data key -------------------------------------------


def wrapped_key_offset(world: World, obj: Stored, key_id: str = "") -> int:
    """A byte inside the wrapped data key of an encrypted blob's header (crypto/envelope.py
    Header: after the magic, header length, chunk size, wrap kind, key id length, key id and
    the wrapped key's length; then 18 bytes into the wrapped key). EncryptType 1 (no
    `key_id`): the sealed key's version byte and nonce, then 5 bytes of its ciphertext;
    EncryptType 2: the KMS's 12-byte nonce, then 6 bytes of its ciphertext."""
    ident = key_id.encode()
    head = blob_file(world, TIANJIN, obj.blob_ids[0]).read_bytes()
    kind = 2 if key_id else 1
    assert head[10:13 + len(ident)] == bytes([kind]) + struct.pack(">H", len(ident)) + ident
    return 15 + len(ident) + 13 + 5


def test_scrub_repairs_a_damaged_wrapped_key(quiet: World) -> None:
    sealed = quiet.coffer(TIANJIN, SHANGHAI, encrypt_type=1)
    obj = quiet.put(sealed, "key-rot.bin", random_bytes(3000, 20))
    replicate(quiet, 1)
    with damaged(quiet, obj, SHANGHAI, offset=wrapped_key_offset(quiet, obj)) as d:
        doc = quiet.srv.admin("run", "scrub")
        assert [(f["Region"], f["Repaired"], f["Problem"].startswith(f"blob {d.blob}: "))
                for f in doc["Findings"]] == [(SHANGHAI, True, True)]
        assert_files(quiet, obj, TIANJIN, (TIANJIN, SHANGHAI))


def test_get_of_a_copy_with_a_damaged_wrapped_key_is_served_elsewhere(quiet: World) -> None:
    sealed = quiet.coffer(TIANJIN, SHANGHAI, encrypt_type=1)
    data = random_bytes(3000, 21)
    obj = quiet.put(sealed, "key-rot-read.bin", data)
    replicate(quiet, 1)
    with damaged(quiet, obj, SHANGHAI, offset=wrapped_key_offset(quiet, obj)):
        assert_got(get(quiet, obj, SHANGHAI), 200, data, SHANGHAI)


def kms_coffer(world: World, *regions: str) -> tuple[str, str]:
    """An EncryptType 2 coffer in `regions` (the account's service role granted, a new KMS
    key of its own); its name and key id."""
    app_id = world.account.app_id
    assert world.srv.admin("role", "grant", "--app-id", app_id) == {"AppId": app_id,
                                                                    "ServiceRole": True}
    key = world.srv.admin("kms", "create-key", "--app-id", app_id)
    coffer = world.coffer(*regions, encrypt_type=2, key_id=key["KeyId"],
                          key_region=key["KeyRegion"])
    return coffer, key["KeyId"]


def test_a_damaged_kms_wrapped_key_is_damage_not_a_kms_refusal(quiet: World) -> None:
    """EncryptType 2, the primary's wrapped data key damaged: the KMS cannot unwrap it, but
    ap-shanghai's copy of the same blob unwraps, so the copy is to blame, not the KMS (which
    would refuse every copy): the GET is served from ap-shanghai and the scrub reports and
    repairs the copy (not Skipped)."""
    coffer, key_id = kms_coffer(quiet, TIANJIN, SHANGHAI)
    data = random_bytes(200_000, 28)
    obj = quiet.put(coffer, "kms-key-rot.bin", data)
    replicate(quiet, 1)
    unwrap = f"its wrapped data key does not unwrap, region {SHANGHAI}'s does"
    with damaged(quiet, obj, TIANJIN, offset=wrapped_key_offset(quiet, obj, key_id)) as d:
        assert_got(get(quiet, obj), 200, data, TIANJIN)
        problem = read_problem(TIANJIN, d.blob, unwrap)
        assert_read_logged(quiet, obj, TIANJIN, d.blob, problem, SHANGHAI)
        assert list(queue_of(quiet, obj)) == [TIANJIN]
        scrub(quiet, [finding(obj, TIANJIN, d.blob,
                              "its wrapped data key does not unwrap, another region's does")])
        assert recorded(quiet, obj) == [("read", TIANJIN, d.blob, problem, True)]
        assert_files(quiet, obj, SHANGHAI, (TIANJIN, SHANGHAI))
        assert queue_of(quiet, obj) == {}
    assert_served(quiet, obj, data, TIANJIN, SHANGHAI)
    scrub(quiet, [])


# -- 4. objects whose key cannot be used ---------------------------------------------------------


def test_objects_of_a_disabled_kms_key_are_skipped(quiet: World) -> None:
    coffer, key_id = kms_coffer(quiet, TIANJIN)
    obj = quiet.put(coffer, "kms.bin", random_bytes(3000, 22))
    assert quiet.srv.admin("kms", "disable-key", "--key-id", key_id)["Enabled"] is False
    try:
        before = integrity(quiet)["Findings"]
        scrub(quiet, [], skipped=(obj,))
        assert recorded(quiet, obj) == []
        assert integrity(quiet)["Findings"] == before
    finally:
        assert quiet.srv.admin("kms", "enable-key", "--key-id", key_id)["Enabled"]
    scrub(quiet, [])


# -- 5. the background scrubber and the pace ---------------------------------------------------

SCRUB_PASS = (r"INFO datacoffer[.\w]*: scrub pass: (\d+) objects, (\d+) copies, (\d+) "
              r"bytes checked, (\d+) damaged copies found \((\d+) repaired\)\n")


def scrub_passes(world: World) -> list[tuple[int, ...]]:
    return [tuple(map(int, m)) for m in re.findall(SCRUB_PASS, world.srv.log())]


def test_scrub_rate_paces_admin_run_scrub(scrubbing: World) -> None:
    """Three 1 MiB copies at 1 MiB/s: at least 2 s (the first MiB is not waited for)."""
    coffer = scrubbing.coffer(TIANJIN, SHANGHAI, GUANGZHOU)
    obj = scrubbing.put(coffer, "paced.bin", random_bytes(MiB, 23))
    wait_until(lambda: len(query(scrubbing.db, "SELECT region FROM object_copies WHERE "
                                               "object_id = ?", obj.id)) == 3, 15,
               "the background worker copied the object")
    paced = ServerProcess(scrubbing.data, config=scrubbing.srv.config,
                          env={"DATACOFFER_SCRUB_RATE": str(MiB)})
    began = time.monotonic()
    doc = paced.admin("run", "scrub")
    took = time.monotonic() - began
    assert doc["Bytes"] >= 3 * MiB and doc["Findings"] == [], doc
    assert took >= (doc["Bytes"] - MiB) / MiB, took


class Metered(Throttle):
    """A throttle that only counts what is asked of it."""

    def __init__(self) -> None:
        super().__init__(0)
        self.taken: list[int] = []

    def take(self, count: int) -> None:
        self.taken.append(count)


def test_scrub_rate_counts_the_bytes_read(tmp_path: Path) -> None:
    data = random_bytes(3000, 24)
    path = tmp_path / "blob"
    path.write_bytes(data)
    meter = Metered()
    check_file(path, "0" * 32, len(data), hashlib.sha256(data).hexdigest(), None, meter)
    assert sum(meter.taken) == len(data), meter.taken


def test_background_scrubber_repairs_by_itself(scrubbing: World, quiet: World) -> None:
    # a pass at start, before any object existed
    assert scrub_passes(scrubbing)[0] == (0, 0, 0, 0, 0)
    coffer = scrubbing.coffer(TIANJIN, SHANGHAI)
    obj = scrubbing.put(coffer, "bg.bin", random_bytes(3000, 25))
    wait_until(lambda: blob_file(scrubbing, SHANGHAI, obj.blob_ids[0]).exists(), 15,
               "the background worker copied the object")
    with damaged(scrubbing, obj, SHANGHAI) as d:
        wait_until(lambda: d.path.exists() and d.path.read_bytes() == d.original, 15,
                   "the background scrubber repaired the copy")
        wait_until(lambda: any(p[3] == 1 for p in scrub_passes(scrubbing)), 10,
                   "the pass that found the damage logged it")
        assert f"found by scrub): {SHA_DIFFERS}\n" in scrubbing.srv.log()
        found = [row for row in recorded(scrubbing, obj) if row[0] == "scrub"]
        assert found[0][1:] == (SHANGHAI, d.blob, SHA_DIFFERS, True)
        wait_until(lambda: queue_of(scrubbing, obj) == {}, 10, "an empty queue")
    # the passes go on, every second
    count = len(scrub_passes(scrubbing))
    wait_until(lambda: len(scrub_passes(scrubbing)) >= count + 1, 10, "another pass")
    assert scrub_passes(scrubbing)[-1][3:] == (0, 0)
    # `serve --no-background` runs no scrubber
    assert "scrub pass" not in quiet.srv.log()


LEFT = "scrub pass left to another process of this installation"


def test_one_background_scrub_pass_at_a_time(
        two_servers: tuple[ServerProcess, ServerProcess]) -> None:
    """Two servers on one data directory, each starting a scrub pass every second: a pass
    over a 3 MiB object paced at 256 KiB/s takes 8 s, and while one server's pass holds the
    installation's "scrub" lease, the other leaves its passes to it (and logs so)."""
    a, b = two_servers
    config = a.data_dir.parent / "datacoffer.toml"
    config.write_text("scrub_interval = 1\nscrub_rate = 262144\n")
    a.config = b.config = config
    a.start()
    world = World.create(a)
    try:
        world.put(world.coffer(TIANJIN), "slow.bin", random_bytes(3 * MiB, 33))
        b.start()  # (every pass from now on reads slow.bin)
        wait_until(lambda: any(LEFT in s.log() for s in (a, b)), 10,
                   "a server left a scrub pass to the other")
        [(holder,)] = query(world.db, "SELECT holder FROM worker_leases WHERE name = 'scrub'")
        pid = int(holder.rsplit(":", 2)[1])
        assert a.proc is not None and b.proc is not None
        leaving = [s for s in (a, b) if LEFT in s.log()]
        assert [s.proc.pid for s in (a, b) if s not in leaving] == [pid], (holder, leaving)
    finally:
        world.close()


# -- 6. settings and help ----------------------------------------------------------------------


def test_scrub_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("DATACOFFER_"):
            monkeypatch.delenv(name)
    s = load(data_dir=str(tmp_path))
    assert (s.scrub_interval, s.scrub_rate) == (86400, 16 * MiB)
    conf = tmp_path / "c.toml"
    conf.write_text("scrub_interval = 60\nscrub_rate = 0\n")
    assert (load(conf).scrub_interval, load(conf).scrub_rate) == (60, 0)
    monkeypatch.setenv("DATACOFFER_SCRUB_RATE", "1048576")
    assert load(conf).scrub_rate == MiB
    monkeypatch.delenv("DATACOFFER_SCRUB_RATE")
    for text, message in (("scrub_interval = 0", r"^scrub_interval must be at least 1$"),
                          ("scrub_rate = -1", r"^scrub_rate must be 0 \(no limit\) or more$")):
        conf.write_text(text + "\n")
        with pytest.raises(ConfigError, match=message):
            load(conf)
    # and the command refuses to start with it
    done = subprocess.run([*BIN, "admin", "run", "scrub", "--data-dir", str(tmp_path / "d"),
                           "--config", str(conf)], capture_output=True, text=True,
                          env=dict(os.environ), timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (
        2, "", "error: scrub_rate must be 0 (no limit) or more\n")
    assert not (tmp_path / "d").exists()


def test_admin_run_scrub_help() -> None:
    done = subprocess.run([*BIN, "admin", "run", "scrub", "--help"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "  datacoffer admin run scrub\n" in done.stdout
    assert ("  DATACOFFER_SCRUB_RATE=0 datacoffer admin run scrub    # as fast as the disks go\n"
            in done.stdout)
    text = " ".join(done.stdout.split())
    assert ('Prints {"Objects", "Copies", "Bytes", "Skipped", "Findings"}; "Skipped" counts '
            "objects whose KMS key could not be used.") in text
    assert "Examples:" in text


def test_a_stopping_server_ends_a_long_scrub_pass_at_once(tmp_path: Path) -> None:
    """A scrub pass paced to take minutes does not hold up a stopping server: it ends within
    a chunk (core/throttle.Stopped), and the process shuts down cleanly in a few seconds, not
    when the pass is done."""
    srv = start(tmp_path, "scrub_interval = 1\nscrub_rate = 65536\n", background=True)
    world = World.create(srv)
    try:
        coffer = world.coffer(TIANJIN)
        world.put(coffer, "slow.bin", random_bytes(4 * MiB, 27))  # > 60 s at 64 KiB/s
        wait_until(lambda: len(scrub_passes(world)) >= 1, 10, "the pass at start")
        time.sleep(1.5)  # the next pass is under way, reading slow.bin
        assert srv.proc is not None
        began = time.monotonic()
        srv.proc.terminate()
        srv.proc.wait(15)  # (uvicorn re-raises the SIGTERM it handled: the status is -15)
        assert time.monotonic() - began < 8
        assert "Application shutdown complete" in srv.log()
    finally:
        world.close()
        srv.stop()
