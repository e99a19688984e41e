"""`upload_file` and `download_file`: PutObject or parallel multipart, parallel parts or
ranges, resumed, verified end to end, and never a partial file left behind."""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from datacoffer.client import Client, RetryPolicy, TransferConfig, errors, models
from tests.serverproc import ServerProcess

MiB = 1024 * 1024
#: multipart above 3 MiB, in 1 MiB parts, 3 at a time
SMALL = TransferConfig(threshold=3 * MiB, part_size=MiB, concurrency=3)
FAST = RetryPolicy(attempts=5, base=0.001, cap=0.01)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def split(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


def multipart_etag(parts: list[bytes]) -> str:
    return md5(b"".join(hashlib.md5(p).digest() for p in parts)) + f"-{len(parts)}"


def composite_sha256(parts: list[bytes]) -> str:
    return sha256(b"".join(hashlib.sha256(p).digest() for p in parts)) + f"-{len(parts)}"


class Progress:
    """A thread-safe progress callback: the running total and every call."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.total = 0
        self.calls: list[int] = []

    def __call__(self, n: int) -> None:
        with self.lock:
            self.total += n
            self.calls.append(n)


class Recorded:
    """A Client that keeps every request it sent (method, partNumber, Range)."""

    def __init__(self, base_url: str, secret_id: str, secret_key: str) -> None:
        self.requests: list[httpx.Request] = []
        self.lock = threading.Lock()
        self.sdk = Client(base_url, secret_id, secret_key, retry=FAST)
        self.sdk._http.event_hooks = {"request": [self._keep], "response": []}

    def _keep(self, request: httpx.Request) -> None:
        with self.lock:
            self.requests.append(request)

    def part_puts(self) -> list[int]:
        return sorted(int(parse_qs(urlsplit(str(r.url)).query)["partNumber"][0])
                      for r in self.requests
                      if r.method == "PUT" and "partNumber=" in str(r.url))

    def ranges(self) -> list[str]:
        return sorted((r.headers["range"] for r in self.requests if "range" in r.headers),
                      key=lambda v: int(v.split("=")[1].split("-")[0]))

    def gets(self) -> list[httpx.Request]:
        return [r for r in self.requests if r.method == "GET"]


@pytest.fixture
def rec(server, account) -> Iterator[Recorded]:
    r = Recorded(server.base_url, account.secret_id, account.secret_key)
    yield r
    r.sdk.close()


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# -- upload and download of both kinds ----------------------------------------------------------

def test_small_file_is_one_put_object(rec, coffer, tmp_path):
    sdk = rec.sdk
    data = os.urandom(200_000)
    src = write(tmp_path / "small.bin", data)
    progress = Progress()
    result = sdk.upload_file(coffer, "dir/small file.bin", src, progress=progress,
                             content_type="application/zip")
    assert result == models.TransferResult(coffer, "dir/small file.bin", 200_000, md5(data),
                                           sha256(data), parts=1, resumed_parts=0)
    assert progress.total == 200_000
    assert all(n > 0 for n in progress.calls)
    assert [r.method for r in rec.requests] == ["PUT", "HEAD"]
    put = rec.requests[0]
    assert put.headers["content-length"] == "200000"
    assert put.headers["content-type"] == "application/zip"
    assert "partNumber" not in str(put.url)

    info = sdk.head_object(coffer, "dir/small file.bin")
    assert (info.size, info.etag, info.sha256, info.content_type) == (
        200_000, md5(data), sha256(data), "application/zip")

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    got = Progress()
    result = sdk.download_file(coffer, "dir/small file.bin", out_dir / "copy.bin", progress=got)
    assert result == models.TransferResult(coffer, "dir/small file.bin", 200_000, md5(data),
                                           sha256(data), parts=1, resumed_parts=0)
    assert (out_dir / "copy.bin").read_bytes() == data
    assert listing(out_dir) == ["copy.bin"]
    assert got.total == 200_000


def test_large_file_is_a_parallel_multipart_upload(rec, coffer, tmp_path):
    sdk = rec.sdk
    data = os.urandom(5 * MiB + MiB // 2)
    src = write(tmp_path / "big.bin", data)
    parts = split(data, MiB)
    assert [len(p) for p in parts] == [MiB] * 5 + [MiB // 2]
    progress = Progress()
    result = sdk.upload_file(coffer, "big.bin", src, config=SMALL, progress=progress)
    assert result == models.TransferResult(coffer, "big.bin", len(data), multipart_etag(parts),
                                           composite_sha256(parts), parts=6, resumed_parts=0)
    assert result.etag.endswith("-6")
    assert result.sha256.endswith("-6")
    assert progress.total == len(data)
    assert rec.part_puts() == [1, 2, 3, 4, 5, 6]
    assert sdk.list_multipart_uploads(coffer).uploads == []

    info = sdk.head_object(coffer, "big.bin")
    assert (info.size, info.etag, info.sha256) == (len(data), result.etag, result.sha256)

    rec.requests.clear()
    got = Progress()
    out = tmp_path / "big.copy"
    result = sdk.download_file(coffer, "big.bin", out, config=SMALL, progress=got)
    assert result == models.TransferResult(coffer, "big.bin", len(data), multipart_etag(parts),
                                           composite_sha256(parts), parts=6)
    assert out.read_bytes() == data
    assert got.total == len(data)
    # one GET per part, each checked against its own SHA-256
    numbers = sorted(int(parse_qs(urlsplit(str(r.url)).query)["partNumber"][0])
                     for r in rec.gets())
    assert numbers == [1, 2, 3, 4, 5, 6]
    assert sorted(listing(tmp_path)) == ["big.bin", "big.copy"]

    # the default configuration downloads it part by part too
    result = sdk.download_file(coffer, "big.bin", tmp_path / "again.bin")
    assert result.parts == 6
    assert (tmp_path / "again.bin").read_bytes() == data


def test_a_simple_object_above_the_threshold_downloads_in_parallel_ranges(rec, coffer,
                                                                          tmp_path):
    sdk = rec.sdk
    data = os.urandom(3 * MiB + 1000)
    src = write(tmp_path / "simple.bin", data)
    result = sdk.upload_file(coffer, "simple.bin", src)  # default threshold: 64 MiB
    assert result.parts == 1
    assert result.etag == md5(data)
    assert result.sha256 == sha256(data)

    rec.requests.clear()
    got = Progress()
    config = TransferConfig(threshold=MiB, part_size=MiB, concurrency=3)
    out = tmp_path / "simple.copy"
    result = sdk.download_file(coffer, "simple.bin", out, config=config, progress=got)
    assert result == models.TransferResult(coffer, "simple.bin", len(data), md5(data),
                                           sha256(data), parts=4)
    assert out.read_bytes() == data
    assert got.total == len(data)
    assert rec.ranges() == [f"bytes=0-{MiB - 1}", f"bytes={MiB}-{2 * MiB - 1}",
                            f"bytes={2 * MiB}-{3 * MiB - 1}", f"bytes={3 * MiB}-{3 * MiB + 999}"]
    assert len(rec.gets()) == 4

    # below its threshold: one GET without a Range
    rec.requests.clear()
    sdk.download_file(coffer, "simple.bin", tmp_path / "one.bin")
    assert (tmp_path / "one.bin").read_bytes() == data
    assert rec.ranges() == []
    assert len(rec.gets()) == 1


def test_download_replaces_an_existing_file(sdk, coffer, tmp_path):
    sdk.put_object(coffer, "new", b"new content")
    target = write(tmp_path / "target.txt", b"old content that is longer")
    sdk.download_file(coffer, "new", target)
    assert target.read_bytes() == b"new content"
    assert listing(tmp_path) == ["target.txt"]


# -- resume -------------------------------------------------------------------------------------

def test_an_interrupted_upload_is_resumed(rec, coffer, tmp_path):
    sdk = rec.sdk
    data = os.urandom(5 * MiB + MiB // 2)
    src = write(tmp_path / "resume.bin", data)
    parts = split(data, MiB)

    # an earlier run stored parts 1 and 2, and part 3 with wrong bytes (of the right length)
    upload = sdk.initiate_multipart_upload(coffer, "resume.bin")
    sdk.upload_part(coffer, "resume.bin", upload.upload_id, 1, parts[0], length=MiB)
    sdk.upload_part(coffer, "resume.bin", upload.upload_id, 2, parts[1], length=MiB)
    wrong = os.urandom(MiB)
    sdk.upload_part(coffer, "resume.bin", upload.upload_id, 3, wrong, length=MiB)

    rec.requests.clear()
    progress = Progress()
    result = sdk.upload_file(coffer, "resume.bin", src, config=SMALL, progress=progress)
    assert result == models.TransferResult(coffer, "resume.bin", len(data),
                                           multipart_etag(parts), composite_sha256(parts),
                                           parts=6, resumed_parts=2)
    # parts 1 and 2 were kept; part 3 was sent again, with the file's bytes
    assert rec.part_puts() == [3, 4, 5, 6]
    # no new upload was started: the interrupted one was completed
    assert not any(r.method == "POST" and "uploads" in str(r.url) for r in rec.requests)
    assert progress.total == len(data)

    with sdk.get_object(coffer, "resume.bin") as reader:
        assert reader.read() == data
    with sdk.get_object(coffer, "resume.bin", part_number=3) as reader:
        assert reader.read() == parts[2]
    with pytest.raises(errors.MultipartAlreadyCompleted):
        sdk.abort_multipart_upload(coffer, "resume.bin", upload.upload_id)
    assert sdk.list_multipart_uploads(coffer).uploads == []


def test_resume_keeps_the_part_size_of_the_interrupted_run(rec, coffer, tmp_path):
    sdk = rec.sdk
    data = os.urandom(4 * MiB + 10)
    src = write(tmp_path / "f.bin", data)
    # the earlier run used 2 MiB parts; this one is configured for 1 MiB
    upload = sdk.initiate_multipart_upload(coffer, "f.bin")
    sdk.upload_part(coffer, "f.bin", upload.upload_id, 1, data[:2 * MiB], length=2 * MiB)
    rec.requests.clear()
    result = sdk.upload_file(coffer, "f.bin", src, config=SMALL)
    parts = split(data, 2 * MiB)
    assert (result.parts, result.resumed_parts) == (3, 1)
    assert result.etag == multipart_etag(parts)
    assert rec.part_puts() == [2, 3]
    with sdk.get_object(coffer, "f.bin") as reader:
        assert reader.read() == data


def test_resume_false_does_not_look_for_an_upload(sdk, coffer, tmp_path):
    data = os.urandom(3 * MiB + 1)
    src = write(tmp_path / "r.bin", data)
    upload = sdk.initiate_multipart_upload(coffer, "r.bin")
    config = TransferConfig(threshold=3 * MiB, part_size=MiB, concurrency=3, resume=False)
    with pytest.raises(errors.ObjectAlreadyUploading):
        sdk.upload_file(coffer, "r.bin", src, config=config)
    sdk.abort_multipart_upload(coffer, "r.bin", upload.upload_id)
    result = sdk.upload_file(coffer, "r.bin", src, config=config)
    assert (result.parts, result.resumed_parts) == (4, 0)


# -- refusals and failures leave nothing behind -------------------------------------------------

def test_upload_to_an_existing_key_is_refused(sdk, coffer, tmp_path):
    first = os.urandom(1000)
    sdk.put_object(coffer, "taken", first)
    small = write(tmp_path / "small", os.urandom(2000))
    big = write(tmp_path / "big", os.urandom(3 * MiB + 5))
    with pytest.raises(errors.ObjectAlreadyExistsOwnedByYou) as caught:
        sdk.upload_file(coffer, "taken", small)
    assert caught.value.resource == f"{coffer}/taken"
    with pytest.raises(errors.ObjectAlreadyExistsOwnedByYou):
        sdk.upload_file(coffer, "taken", big, config=SMALL)
    assert sdk.list_multipart_uploads(coffer).uploads == []
    with sdk.get_object(coffer, "taken") as reader:
        assert reader.read() == first


def test_failed_download_leaves_no_file(sdk, coffer, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(errors.ObjectNotExists) as caught:
        sdk.download_file(coffer, "missing", out / "missing.bin")
    assert caught.value.status == 404
    assert listing(out) == []

    # an existing file at the target stays as it was
    write(out / "keep.bin", b"precious")
    with pytest.raises(errors.ObjectNotExists):
        sdk.download_file(coffer, "missing", out / "keep.bin")
    assert listing(out) == ["keep.bin"]
    assert (out / "keep.bin").read_bytes() == b"precious"

    with pytest.raises(errors.CofferNotFound):
        sdk.download_file(coffer[:-11] + "x-1250000000", "k", out / "k")
    assert listing(out) == ["keep.bin"]


def test_missing_source_file(sdk, coffer, tmp_path):
    with pytest.raises(FileNotFoundError):
        sdk.upload_file(coffer, "k", tmp_path / "no such file")
    with pytest.raises(errors.ObjectNotExists):
        sdk.head_object(coffer, "k")


# -- damaged data on the server ------------------------------------------------------------------

@dataclass
class Own:
    srv: ServerProcess
    sdk: Client
    coffer: str


@pytest.fixture(scope="module")
def own(tmp_path_factory) -> Iterator[Own]:
    """A server of the module's own, whose blob files the tests damage."""
    base = tmp_path_factory.mktemp("corrupt")
    srv = ServerProcess(base / "data")
    try:
        srv.start()
        signed = srv.new_client()
        signed.close()
        with Client(srv.base_url, signed.secret_id, signed.secret_key, retry=FAST) as sdk:
            sdk.create_coffer("damaged-1250000000", ["ap-tianjin"])
            yield Own(srv, sdk, "damaged-1250000000")
    finally:
        srv.stop()


def blob_files(data_dir: Path) -> set[Path]:
    return {p for p in (data_dir / "regions").glob("*/blobs/**/*") if p.is_file()}


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0x01]))


def store_and_damage(own: Own, tmp_path: Path, key: str, data: bytes,
                     config: TransferConfig | None = None, damaged_part: int = 1) -> None:
    """Upload `data`, then flip one byte in the blob of part `damaged_part`."""
    before = blob_files(own.srv.data_dir)
    own.sdk.upload_file(own.coffer, key, write(tmp_path / "src", data), config=config)
    added = blob_files(own.srv.data_dir) - before
    part_size = (config or TransferConfig()).part_size if len(added) > 1 else len(data)
    part = split(data, part_size)[damaged_part - 1]
    (blob,) = [p for p in added if p.read_bytes() == part]
    assert blob.relative_to(own.srv.data_dir).parts[:3] == ("regions", "ap-tianjin", "blobs")
    flip_byte(blob, len(part) // 2)


@pytest.mark.parametrize(("size", "config", "damaged", "download", "expected"), [
    # a whole part of up to 1 MiB is checked before the answer starts: 500 (retried, then
    # raised)
    pytest.param(300_000, None, 1, None, errors.InternalError, id="small-simple"),
    pytest.param(2 * MiB + 10, TransferConfig(threshold=MiB, part_size=MiB), 2, None,
                 errors.InternalError, id="multipart-part"),
    # a larger whole object streams: the server cuts the connection at the damage
    pytest.param(2 * MiB, None, 1, None, errors.TransportError, id="large-simple-one-get"),
    # ranges are not checked by the server (they cover no whole part): the client's SHA-256
    pytest.param(2 * MiB, None, 1, TransferConfig(threshold=MiB, part_size=MiB // 2),
                 errors.ChecksumMismatch, id="large-simple-ranges"),
])
def test_damaged_data_is_detected_and_leaves_no_file(own, tmp_path, size, config, damaged,
                                                     download, expected):
    key = f"damaged-{size}-{damaged}-{expected.__name__}-{download is not None}"
    data = os.urandom(size)
    store_and_damage(own, tmp_path, key, data, config, damaged)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(errors.DataCofferError) as caught:
        own.sdk.download_file(own.coffer, key, out / "copy.bin", config=download)
    assert type(caught.value) is expected
    if expected is errors.InternalError:
        assert caught.value.status == 500
        assert isinstance(caught.value, errors.ServerFailure)
    if expected is errors.ChecksumMismatch:
        found = re.fullmatch(rf"SHA-256 of {re.escape(key)}: the server reports "
                             rf"'{sha256(data)}', the local data gives '([0-9a-f]{{64}})'",
                             str(caught.value))
        assert found is not None, str(caught.value)
        assert found.group(1) != sha256(data)
    assert listing(out) == []
