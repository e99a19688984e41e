"""EncryptType 2 with an external key manager over KMIP (`kms = "kmip"`), against a real
PyKMIP server (tests/kmip_server.py) and a real `datacoffer serve`:

1. `admin kms create-key` creates an active AES-256 key in the key manager (checked there with
   a PyKMIP client of our own), and the installation keeps no key material;
2. simple and multipart objects, and ranges, round-trip exactly; each blob's header names the
   KMIP key (wrap kind 2); no plaintext reaches the disk;
3. the key manager down (stopped, or hung past `kmip_timeout`): reads and writes answer
   409 KMSFailed at once (the message names the key, and nothing of the insides; the log has
   the detail under the TraceId), and work again once it is back (the server reconnects);
4. a key revoked, or destroyed, in the key manager: KMSFailed;
5. `admin kms disable-key` gates a KMIP key too; `enable-key` restores it;
6. a `kms = "kmip"` configuration without `kmip_cert` is refused at start;
7. parallel PutObjects (one KMIP connection per server thread) all succeed.

The KMIP server and the Data Coffer server are shared by the module; every test that changes
a key's state has an account and a key of its own. Tests that stop or pause the KMIP server
bring it back before they end.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509

from datacoffer.client import errors
from tests.kmip_server import HOST, KmipServerProcess, make_certs
from tests.serverproc import ServerProcess, free_port
from tests.test_durability import check_error, db_rows, wait_until
from tests.test_encryption import (
    CHUNK,
    REGION,
    SMALL_READ,
    TAG,
    Ctx,
    MiB,
    _files_holding,
    _marker,
    assert_refused,
    blob_path,
    chunk_count,
    coffer_for,
    error_doc,
    header_length,
    kms_account,
    make_ctx,
    md5_hex,
    multipart_etag,
    part_blob_paths,
    put_coffer,
    raw_of,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from kmip import enums
    from kmip.pie import exceptions as kmip_exceptions

#: PyKMIP's client makes its TLS context with the deprecated ssl.PROTOCOL_TLS
pytestmark = pytest.mark.filterwarnings(
    "ignore:ssl.PROTOCOL_TLS is deprecated:DeprecationWarning")

#: seconds before a KMIP request that gets no answer fails (the server's `kmip_timeout`)
KMIP_TIMEOUT = 2
#: what a refusal may take beyond KMIP_TIMEOUT on a loaded 2-core machine (less than another
#: KMIP_TIMEOUT: a hung key manager costs one timeout, not two)
SLACK = 1.5
#: a wrapped data key: nonce, the 32-byte key sealed by AES-GCM, the GCM tag
WRAPPED_LEN = 12 + 32 + 16


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kmip(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KmipServerProcess]:
    base = tmp_path_factory.mktemp("kmip")
    with KmipServerProcess(base / "server", make_certs(base / "certs")) as srv:
        yield srv


def kmip_config(kmip: KmipServerProcess, path: Path, *, port: int | None = None,
                omit: str = "") -> Path:
    certs = kmip.certs
    settings = {"max_coffers": 100000, "kms": "kmip", "kmip_host": HOST,
                "kmip_port": port or kmip.port, "kmip_cert": str(certs.client_cert),
                "kmip_key": str(certs.client_key), "kmip_ca": str(certs.ca),
                "kmip_timeout": KMIP_TIMEOUT}
    settings.pop(omit, None)
    path.write_text("".join(f"{k} = {v!r}\n" if isinstance(v, int) else f'{k} = "{v}"\n'
                            for k, v in settings.items()))
    return path


@pytest.fixture(scope="module")
def dc(tmp_path_factory: pytest.TempPathFactory,
       kmip: KmipServerProcess) -> Iterator[ServerProcess]:
    """A Data Coffer server whose KMS is the KMIP server."""
    base = tmp_path_factory.mktemp("dc-kmip")
    srv = ServerProcess(base / "data", config=kmip_config(kmip, base / "datacoffer.toml"))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def ctx(dc: ServerProcess) -> Iterator[Ctx]:
    """A new account, its service role granted, a KMIP key of its own and an EncryptType 2
    coffer with that key."""
    c = make_ctx(dc, 2)
    yield c
    c.close()


@pytest.fixture
def kmip_up(kmip: KmipServerProcess) -> Iterator[KmipServerProcess]:
    """The KMIP server, for a test that stops or pauses it: running again afterwards."""
    yield kmip
    if kmip.proc is not None:
        kmip.resume()  # harmless when it runs
    if not kmip.running:
        kmip.stop()
        kmip.start()


def kmip_state(kmip: KmipServerProcess, uid: str) -> dict[str, Any]:
    """The key's attributes in the key manager, by name."""
    with kmip.client() as c:
        _, attrs = c.get_attributes(uid, ["State", "Cryptographic Algorithm",
                                          "Cryptographic Length"])
    return {a.attribute_name.value: a.attribute_value.value for a in attrs}


# -- helpers ----------------------------------------------------------------------------------


def timed(call: Callable[[], httpx.Response]) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    r = call()
    return r, time.monotonic() - started


def assert_write_and_read_refused_in_time(ctx: Ctx, kmip: KmipServerProcess) -> httpx.Response:
    """A PutObject and a GetObject of a.bin both answer KMSFailed within kmip_timeout; the
    GetObject's answer."""
    r, took = timed(lambda: ctx.raw.put(f"/{ctx.coffer}/new.bin", content=b"new"))
    assert took < KMIP_TIMEOUT + SLACK
    assert_kms_failed(ctx, r, kmip, "wrap")
    r, took = timed(lambda: ctx.raw.get(f"/{ctx.coffer}/a.bin"))
    assert took < KMIP_TIMEOUT + SLACK
    assert_kms_failed(ctx, r, kmip, "unwrap")
    return r


def leaks(kmip: KmipServerProcess) -> tuple[str, ...]:
    """Words of the KMIP back-end's insides that no client may see."""
    return (HOST, str(kmip.port), "KMIP server", "EOFError", "ConnectionRefused", "Errno",
            "SSL", "Timeout", "timed out", "PERMISSION_DENIED", "ITEM_NOT_FOUND",
            "Active state", "Could not locate", "KmipOperationFailure", "pykmip", "kmip.")


def assert_kms_failed(ctx: Ctx, r: httpx.Response, kmip: KmipServerProcess, verb: str) -> None:
    """409 KMSFailed whose message is exactly the keyring's sentence for `verb` ("wrap" or
    "unwrap"), naming the key; the server log has the reason under the TraceId."""
    assert_refused(r, "KMSFailed", names=ctx.key_id, leaks=leaks(kmip))
    assert error_doc(r)["Message"] == f"The KMS could not {verb} a data key with {ctx.key_id}."
    trace = r.headers["x-cdcs-trace-id"]
    wait_until(lambda: f"trace {trace}: KMSFailed {ctx.coffer}" in ctx.server.log(),
               what="the log line of the refusal")


def log_line(server: ServerProcess, trace: str) -> str:
    return next(line for line in server.log().splitlines() if f"trace {trace}:" in line)


def store(ctx: Ctx, key: str, data: bytes) -> None:
    assert ctx.sdk.put_object(ctx.coffer, key, data).etag == md5_hex(data)


def assert_reads_and_writes_work(ctx: Ctx, stored: dict[str, bytes], label: str) -> None:
    for key, data in stored.items():
        r = ctx.raw.get(f"/{ctx.coffer}/{key}")
        assert r.status_code == 200, r.text
        assert r.content == data
    data = os.urandom(5000)
    r = ctx.raw.put(f"/{ctx.coffer}/{label}.bin", content=data)
    assert r.status_code == 200, r.text
    assert ctx.raw.get(f"/{ctx.coffer}/{label}.bin").content == data


# -- 1. keys are made in the key manager ------------------------------------------------------


def test_create_key_makes_an_active_aes256_key_in_the_kmip_server(
        dc: ServerProcess, kmip: KmipServerProcess) -> None:
    acc, key_id, key_region = kms_account(dc)
    assert key_region == REGION
    assert kmip_state(kmip, key_id) == {
        "State": enums.State.ACTIVE,
        "Cryptographic Algorithm": enums.CryptographicAlgorithm.AES,
        "Cryptographic Length": 256}
    with kmip.client() as c:
        key = c.get(key_id)
    assert type(key).__name__ == "SymmetricKey"
    assert (key.cryptographic_algorithm, key.cryptographic_length, len(key.value)) == (
        enums.CryptographicAlgorithm.AES, 256, 32)
    # the installation knows the key's owner and region, and holds none of its material
    assert dc.admin("kms", "list-keys", "--app-id", acc.app_id) == [
        {"KeyId": key_id, "KeyRegion": REGION, "AppId": acc.app_id, "Enabled": True}]
    assert db_rows(dc.data_dir, "SELECT app_id, region, enabled, sealed_material FROM kms_keys"
                                " WHERE key_id = ?", key_id) == [(acc.app_id, REGION, 1, b"")]
    material = bytes(key.value)
    assert _files_holding(dc.data_dir, material) == set()
    # a second key is another object of the key manager
    other = dc.admin("kms", "create-key", "--app-id", acc.app_id)
    assert other["KeyId"] != key_id
    assert kmip_state(kmip, other["KeyId"])["State"] == enums.State.ACTIVE


# -- 2. round trips ---------------------------------------------------------------------------


def test_objects_round_trip_and_blobs_name_the_kmip_key(ctx: Ctx) -> None:
    simple = os.urandom(3 * CHUNK + 5)
    store(ctx, "simple.bin", simple)
    r = ctx.raw.get(f"/{ctx.coffer}/simple.bin")
    assert r.status_code == 200, r.text
    assert r.content == simple
    assert r.headers["x-cdcs-encrypt-type"] == "2"
    with ctx.sdk.get_object(ctx.coffer, "simple.bin", byte_range=(CHUNK - 3, 2 * CHUNK + 7)) \
            as got:
        assert got.status == 206
        assert got.read() == simple[CHUNK - 3:2 * CHUNK + 8]

    parts = [os.urandom(MiB), os.urandom(MiB), os.urandom(1234)]
    whole = b"".join(parts)
    up = ctx.sdk.initiate_multipart_upload(ctx.coffer, "mp.bin")
    done = [ctx.sdk.upload_part(ctx.coffer, "mp.bin", up.upload_id, n, d, length=len(d))
            for n, d in enumerate(parts, 1)]
    assert ctx.sdk.complete_multipart_upload(ctx.coffer, "mp.bin", up.upload_id, done).etag \
        == multipart_etag(parts)
    with ctx.sdk.get_object(ctx.coffer, "mp.bin") as got:
        assert got.read() == whole
    for first, last in [(MiB - 10, MiB + 10), (2 * MiB - 1, len(whole) - 1)]:
        with ctx.sdk.get_object(ctx.coffer, "mp.bin", byte_range=(first, last)) as got:
            assert got.span == (first, last)
            assert got.read() == whole[first:last + 1]
    r = ctx.raw.get(f"/{ctx.coffer}/mp.bin", params={"partNumber": "2"})
    assert r.status_code == 206 and r.content == parts[1]

    # every blob: wrap kind 2, the KMIP key's id, the key manager's AES-GCM output
    blobs = [blob_path(ctx.server.data_dir, ctx.coffer, "simple.bin"),
             *part_blob_paths(ctx.server.data_dir, ctx.coffer, "mp.bin")]
    headers = []
    for path, data in zip(blobs, [simple, *parts], strict=True):
        blob = path.read_bytes()
        hlen = header_length(blob)
        assert len(blob) == hlen + len(data) + TAG * chunk_count(len(data))
        chunk, kind, id_len = struct.unpack_from(">IBH", blob, 6)
        assert (chunk, kind) == (CHUNK, 2)
        assert blob[13:13 + id_len].decode() == ctx.key_id
        (wrapped_len,) = struct.unpack_from(">H", blob, 13 + id_len)
        assert wrapped_len == WRAPPED_LEN
        assert hlen == 13 + id_len + 2 + wrapped_len
        assert data[:CHUNK] not in blob
        headers.append(blob[:hlen])
    assert len(set(headers)) == len(headers)  # a fresh data key, freshly wrapped, per blob


def test_no_plaintext_on_disk(ctx: Ctx, kmip: KmipServerProcess) -> None:
    marker = _marker("KMIP")
    data = marker * 3000
    store(ctx, "marker.bin", data)
    up = ctx.sdk.initiate_multipart_upload(ctx.coffer, "marker-mp.bin")
    part_data = [marker * (MiB // 64), marker * 10]
    parts = [ctx.sdk.upload_part(ctx.coffer, "marker-mp.bin", up.upload_id, n, d,
                                 length=len(d)) for n, d in enumerate(part_data, 1)]
    ctx.sdk.complete_multipart_upload(ctx.coffer, "marker-mp.bin", up.upload_id, parts)
    assert ctx.sdk.get_object(ctx.coffer, "marker.bin").read() == data
    assert ctx.sdk.get_object(ctx.coffer, "marker-mp.bin").read() == b"".join(part_data)
    for where in (ctx.server.data_dir, kmip.work_dir):
        assert _files_holding(where, marker[:32]) == set(), where


# -- 3. the key manager down ------------------------------------------------------------------


def test_kmip_server_stopped_is_kms_failed_then_recovers(ctx: Ctx,
                                                        kmip_up: KmipServerProcess) -> None:
    kmip = kmip_up
    stored = {"a.bin": os.urandom(100_000)}
    store(ctx, "a.bin", stored["a.bin"])
    kmip.stop()
    for attempt in range(3):  # a thread's open connection, then a refused one: alike
        r = assert_write_and_read_refused_in_time(ctx, kmip)
        if attempt == 0:
            # the operator's log says what failed, where
            line = log_line(ctx.server, r.headers["x-cdcs-trace-id"])
            assert f"{HOST}:{kmip.port}" in line, line
    with pytest.raises(errors.KMSFailed):
        ctx.sdk.put_object(ctx.coffer, "new.bin", b"new")
    with pytest.raises(errors.KMSFailed):
        ctx.sdk.get_object(ctx.coffer, "a.bin")
    # what needs no key still answers; nothing was written
    assert ctx.raw.head(f"/{ctx.coffer}/a.bin").status_code == 200
    assert {o.key for o in ctx.sdk.list_objects(ctx.coffer)} == {"a.bin"}

    kmip.start()  # the same port, the same database
    for n in range(8):  # every server thread, whatever connection it held, reconnects
        assert_reads_and_writes_work(ctx, stored, f"after-{n}")


def test_kmip_server_hung_is_kms_failed_within_the_timeout(ctx: Ctx,
                                                           kmip_up: KmipServerProcess) -> None:
    kmip = kmip_up
    stored = {"a.bin": os.urandom(10_000)}
    store(ctx, "a.bin", stored["a.bin"])
    kmip.pause()
    try:
        assert_write_and_read_refused_in_time(ctx, kmip)
    finally:
        kmip.resume()
    for n in range(4):  # no stale answer of a timed-out request is ever taken
        assert_reads_and_writes_work(ctx, stored, f"after-{n}")


# -- 4. keys revoked or destroyed in the key manager ------------------------------------------


def _refused_everywhere(ctx: Ctx, kmip: KmipServerProcess, stored_key: str,
                        upload_id: str) -> None:
    base = f"/{ctx.coffer}"
    assert_kms_failed(ctx, ctx.raw.put(f"{base}/new.bin", content=b"new"), kmip, "wrap")
    assert_kms_failed(ctx, ctx.raw.put(f"{base}/mp.bin", params={
        "partNumber": "2", "uploadId": upload_id}, content=b"x" * 100), kmip, "wrap")
    assert_kms_failed(ctx, ctx.raw.get(f"{base}/{stored_key}"), kmip, "unwrap")
    assert_kms_failed(ctx, ctx.raw.get(f"{base}/{stored_key}", headers={"Range": "bytes=0-9"}),
                      kmip, "unwrap")
    with pytest.raises(errors.KMSFailed):
        ctx.sdk.get_object(ctx.coffer, stored_key)
    with pytest.raises(errors.KMSFailed):
        ctx.sdk.put_object(ctx.coffer, "new.bin", b"new")
    assert ctx.raw.head(f"{base}/{stored_key}").status_code == 200
    assert {o.key for o in ctx.sdk.list_objects(ctx.coffer)} == {stored_key}


def _prepare(ctx: Ctx) -> str:
    store(ctx, "small.bin", os.urandom(100_000))
    upload_id = ctx.sdk.initiate_multipart_upload(ctx.coffer, "mp.bin").upload_id
    ctx.sdk.upload_part(ctx.coffer, "mp.bin", upload_id, 1, os.urandom(MiB), length=MiB)
    return upload_id


def test_revoked_key_is_kms_failed(ctx: Ctx, kmip: KmipServerProcess) -> None:
    upload_id = _prepare(ctx)
    with kmip.client() as c:
        c.revoke(enums.RevocationReasonCode.KEY_COMPROMISE, ctx.key_id,
                 revocation_message="test")
    assert kmip_state(kmip, ctx.key_id)["State"] == enums.State.COMPROMISED
    _refused_everywhere(ctx, kmip, "small.bin", upload_id)
    # the installation still lists it enabled: the key manager has the last word
    assert ctx.server.admin("kms", "list-keys", "--app-id", ctx.account.app_id)[0][
        "Enabled"] is True


def test_destroyed_key_is_kms_failed(ctx: Ctx, kmip: KmipServerProcess) -> None:
    # another key of the same account in the same coffer's account: the ctx's own key works on
    other = ctx.server.admin("kms", "create-key", "--app-id", ctx.account.app_id)
    name = coffer_for(ctx.account.app_id, "doomed")
    r = put_coffer(ctx.raw, name, 2, other["KeyId"], REGION)
    assert r.status_code == 200, r.text
    doomed = Ctx(ctx.server, ctx.account, ctx.sdk, ctx.raw, name, 2, other["KeyId"], REGION)
    upload_id = _prepare(doomed)
    with kmip.client() as c:
        c.revoke(enums.RevocationReasonCode.CESSATION_OF_OPERATION, other["KeyId"])
        c.destroy(other["KeyId"])
        with pytest.raises(kmip_exceptions.KmipOperationFailure):
            c.get(other["KeyId"])
    _refused_everywhere(doomed, kmip, "small.bin", upload_id)
    # the other key of the account is untouched
    store(ctx, "fine.bin", b"fine")
    assert ctx.sdk.get_object(ctx.coffer, "fine.bin").read() == b"fine"


def test_large_get_with_a_revoked_key_is_an_error_answer(ctx: Ctx,
                                                         kmip: KmipServerProcess) -> None:
    data = os.urandom(SMALL_READ + 3 * CHUNK)
    store(ctx, "big.bin", data)
    with kmip.client() as c:
        c.revoke(enums.RevocationReasonCode.KEY_COMPROMISE, ctx.key_id)
    try:
        r = ctx.raw.get(f"/{ctx.coffer}/big.bin")
    except httpx.RemoteProtocolError as exc:  # the 200 was cut off
        raise AssertionError(f"a 200 cut off: {exc}") from None
    assert_kms_failed(ctx, r, kmip, "unwrap")


# -- 5. the installation's own gate -----------------------------------------------------------


def test_disable_key_gates_a_kmip_key_and_enable_restores(ctx: Ctx,
                                                          kmip: KmipServerProcess) -> None:
    stored = {"a.bin": os.urandom(70_000)}
    store(ctx, "a.bin", stored["a.bin"])
    assert ctx.server.admin("kms", "disable-key", "--key-id", ctx.key_id) == {
        "KeyId": ctx.key_id, "KeyRegion": REGION, "AppId": ctx.account.app_id,
        "Enabled": False}
    for r in (ctx.raw.put(f"/{ctx.coffer}/new.bin", content=b"new"),
              ctx.raw.get(f"/{ctx.coffer}/a.bin")):
        assert_refused(r, "KMSFailed", names=ctx.key_id, leaks=leaks(kmip))
        assert error_doc(r)["Message"] == f"The KMS key {ctx.key_id} is disabled."
    # the key manager's own key is untouched
    assert kmip_state(kmip, ctx.key_id)["State"] == enums.State.ACTIVE
    assert ctx.server.admin("kms", "enable-key", "--key-id", ctx.key_id)["Enabled"] is True
    assert_reads_and_writes_work(ctx, stored, "enabled")


# -- 6. configuration -------------------------------------------------------------------------


def test_kmip_without_a_client_certificate_is_refused_at_start(
        tmp_path: Path, kmip: KmipServerProcess) -> None:
    config = kmip_config(kmip, tmp_path / "no-cert.toml", omit="kmip_cert")
    port = free_port()
    done = subprocess.run(
        [sys.executable, "-m", "datacoffer", "serve", "--data-dir", str(tmp_path / "data"),
         "--port", str(port), "--config", str(config)],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert done.stderr.strip() == 'error: kms = "kmip" needs kmip_cert'
    assert not (tmp_path / "data").exists()


def test_create_key_with_the_kmip_server_unreachable_fails_cleanly(
        dc: ServerProcess, kmip: KmipServerProcess, tmp_path: Path) -> None:
    """The operator sees one line naming the failure, and no key row is left behind."""
    config = kmip_config(kmip, tmp_path / "unreachable.toml", port=free_port())
    app_id = kms_account(dc)[0].app_id
    before = dc.admin("kms", "list-keys", "--app-id", app_id)
    done = subprocess.run(
        [sys.executable, "-m", "datacoffer", "admin", "kms", "create-key", "--app-id", app_id,
         "--data-dir", str(dc.data_dir), "--config", str(config)],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    assert done.stdout == ""
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("error: "), done.stderr
    assert dc.admin("kms", "list-keys", "--app-id", app_id) == before


def test_a_key_manager_certificate_for_another_name_is_refused(
        dc: ServerProcess, kmip: KmipServerProcess, tmp_path: Path) -> None:
    """The chain is not enough: the certificate must name the host that was dialled."""
    certs = make_certs(tmp_path / "certs", [x509.DNSName("other.example")])
    with KmipServerProcess(tmp_path / "kmip", certs) as impostor:
        config = kmip_config(impostor, tmp_path / "impostor.toml")
        app_id = kms_account(dc)[0].app_id
        done = subprocess.run(
            [sys.executable, "-m", "datacoffer", "admin", "kms", "create-key", "--app-id",
             app_id, "--data-dir", str(dc.data_dir), "--config", str(config)],
            capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    assert done.stderr.startswith("error: the KMS could not create the key: "), done.stderr
    assert "certificate verify failed" in done.stderr
    assert "not valid for '127.0.0.1'" in done.stderr
    # the same kind of certificate, naming the host, works (the module's own server)
    assert dc.admin("kms", "create-key", "--app-id", app_id)["KeyId"]


# -- 7. concurrency ---------------------------------------------------------------------------


def test_parallel_puts_each_succeed(ctx: Ctx) -> None:
    n = 8
    datas = [os.urandom(50_000 + i) for i in range(n)]
    results: list[int | str] = [0] * n
    barrier = threading.Barrier(n)

    def put(i: int) -> None:
        raw = raw_of(ctx.server, ctx.account)
        try:
            barrier.wait(10)
            r = raw.put(f"/{ctx.coffer}/par/{i}.bin", content=datas[i])
            results[i] = r.status_code if r.status_code == 200 else r.text
        finally:
            raw.close()

    threads = [threading.Thread(target=put, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [200] * n
    for i, data in enumerate(datas):
        r = ctx.raw.get(f"/{ctx.coffer}/par/{i}.bin")
        assert r.status_code == 200 and r.content == data
    check_error(ctx.raw.get(f"/{ctx.coffer}/par/{n}.bin"), 404, "ObjectNotExists")
