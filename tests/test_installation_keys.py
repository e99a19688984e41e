"""The installation's keys (`rootkey.py`, `Installation._master_key`), with real servers.

- the first start makes keys/root.key and keys/master.key (mode 0600, base64 of 32 bytes) and
  seals a check value under the master key in `key_checks`;
- DATACOFFER_MASTER_KEY, when set, is the master key: no master.key is made, and it wins
  over the file;
- a missing or different master key stops the server and the admin commands with one line
  that says what to restore, and no new key is made behind the operator's back; the right key
  brings back every EncryptType 1 object;
- an installation of the previous version (no master key, no check value) gets its master key
  at its next start;
- a copy of the metadata database (with its -wal and -shm) reveals no key and no plaintext;
- no key ever reaches the server's log or the refusal messages.
"""

from __future__ import annotations

import base64
import os
import sqlite3
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from datacoffer.crypto.envelope import WRAP_KMS, WRAP_MASTER, Header
from datacoffer.rootkey import SealingKey
from tests.serverproc import BIN, ServerProcess

APP_ID = "1250000000"
REGION = "ap-tianjin"
MASTER_CHECK = b"datacoffer service master key"


# -- helpers -------------------------------------------------------------------------------------

def key_file(srv: ServerProcess, name: str) -> Path:
    return srv.data_dir / "keys" / f"{name}.key"


def raw_key(srv: ServerProcess, name: str) -> bytes:
    return base64.b64decode(key_file(srv, name).read_bytes(), validate=True)


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def forms(secret: bytes) -> list[bytes]:
    """How a secret could show up in a file: raw, base64 (both alphabets, with and without
    padding), hex."""
    std = base64.b64encode(secret)
    url = base64.urlsafe_b64encode(secret)
    return [secret, std, std.rstrip(b"="), url, url.rstrip(b"="), secret.hex().encode(),
            secret.hex().upper().encode()]


def assert_no_secret(blob: bytes, secrets: dict[str, bytes], where: str) -> None:
    for name, secret in secrets.items():
        for form in forms(secret):
            assert form not in blob, f"{name} ({form[:12]!r}...) found in {where}"


def text_forms(secret: bytes) -> list[str]:
    return [f.decode() for f in forms(secret)[1:]]


def assert_no_key_text(text: str, keys: dict[str, bytes], where: str) -> None:
    for name, key in keys.items():
        for form in text_forms(key):
            assert form not in text, f"{name} found in {where}"


def check_value(srv: ServerProcess) -> bytes | None:
    with sqlite3.connect(srv.data_dir / "metadata.db") as db:
        row = db.execute("SELECT sealed FROM key_checks WHERE name = 'master'").fetchone()
    return row[0] if row else None


def env_of(srv: ServerProcess, env: dict[str, str] | None = None,
           unset: tuple[str, ...] = ()) -> dict[str, str]:
    return {k: v for k, v in {**srv.env, **(env or {})}.items() if k not in unset}


def serve_fails(srv: ServerProcess, env: dict[str, str] | None = None,
                unset: tuple[str, ...] = ()) -> str:
    """Start a server that must refuse: exit 1, one `error: ` line on stderr, nothing else."""
    cmd = [*BIN, "serve", "--data-dir", str(srv.data_dir), "--port", str(srv.port)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                          env=env_of(srv, env, unset))
    assert done.returncode == 1, done
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


def assert_master_refusal(line: str, keys: dict[str, bytes]) -> None:
    assert "master key" in line
    assert "keys/master.key" in line and "DATACOFFER_MASTER_KEY" in line, line
    assert_no_key_text(line, keys, "the refusal message")


def put_encrypted_objects(srv: ServerProcess, coffer: str, *,
                          new_account: bool = True) -> dict[str, bytes]:
    """An EncryptType 1 coffer (of a new account, or of the one there is) and objects of a few
    sizes in it (the service refuses empty objects)."""
    objects = {"one": b"x", "small": os.urandom(1000), "chunk": os.urandom(65536),
               "chunks": os.urandom(3 * 65536 + 5)}
    with srv.new_sdk() if new_account else sdk_of(srv) as sdk:
        sdk.create_coffer(coffer, [REGION], encrypt_type=1)
        for key, data in objects.items():
            sdk.put_object(coffer, key, data)
    return objects


def read_back(sdk, coffer: str, objects: dict[str, bytes]) -> None:
    for key, data in objects.items():
        with sdk.get_object(coffer, key) as reader:
            assert reader.read() == data, key
    with sdk.get_object(coffer, "chunks", byte_range=(65530, 131080)) as reader:
        assert reader.read() == objects["chunks"][65530:131081]


def sdk_of(srv: ServerProcess, app_id: str = APP_ID, uin: str = "100000000001"):
    """An SDK client with a new key of an existing account."""
    from datacoffer.client import Client
    doc = srv.admin("key", "create", "--uin", uin)
    return Client(srv.base_url, doc["SecretId"], doc["SecretKey"])


def blob_ids(srv: ServerProcess, coffer: str) -> list[str]:
    """The blob ids of a coffer's objects and of their parts."""
    with sqlite3.connect(srv.data_dir / "metadata.db") as db:
        simple = db.execute(
            "SELECT objects.blob_id FROM objects JOIN coffers ON coffers.id = objects.coffer_id"
            " WHERE coffers.name = ? AND objects.blob_id != ''", (coffer,)).fetchall()
        parts = db.execute(
            "SELECT parts.blob_id FROM parts JOIN uploads ON uploads.upload_id = parts.upload_id"
            " JOIN coffers ON coffers.id = uploads.coffer_id WHERE coffers.name = ?",
            (coffer,)).fetchall()
    return [b for (b,) in simple + parts]


def blob_file(srv: ServerProcess, blob_id: str) -> Path:
    return srv.data_dir / "regions" / REGION / "blobs" / blob_id[:2] / blob_id


def blob_header(srv: ServerProcess, blob_id: str) -> Header:
    data = blob_file(srv, blob_id).read_bytes()
    header, _ = Header.read(lambda offset, count: data[offset:offset + count])
    return header


def assert_log_clean(srv: ServerProcess, keys: dict[str, bytes]) -> None:
    assert_no_key_text(srv.log(), keys, f"the server log {srv.log_path}")


# -- first start ---------------------------------------------------------------------------------

def test_first_start_creates_both_key_files(tmp_path):
    srv = ServerProcess(tmp_path / "data")
    srv.start()
    try:
        keys_dir = srv.data_dir / "keys"
        assert sorted(p.name for p in keys_dir.iterdir()) == ["master.key", "root.key"]
        assert stat.S_IMODE(keys_dir.stat().st_mode) & 0o077 == 0
        for name in ("root", "master"):
            path = key_file(srv, name)
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, name
            text = path.read_bytes()
            assert len(text) == 44, (name, text)
            assert len(base64.b64decode(text, validate=True)) == 32
        root, master = raw_key(srv, "root"), raw_key(srv, "master")
        assert root != master
        # the check value is sealed under the master key, and only under it
        sealed = check_value(srv)
        assert sealed is not None
        assert SealingKey(master).open(sealed, "check") == MASTER_CHECK
        with pytest.raises(ValueError):
            SealingKey(root).open(sealed, "check")
        # an EncryptType 1 blob's data key is wrapped by that master key
        objects = put_encrypted_objects(srv, "first-1250000000")
        (blob,) = [b for b in blob_ids(srv, "first-1250000000")
                   if blob_file(srv, b).stat().st_size > 100_000]
        header = blob_header(srv, blob)
        assert header.wrap_kind == WRAP_MASTER and header.key_id == ""
        assert len(SealingKey(master).open(header.wrapped_key, "data-key")) == 32
    finally:
        srv.stop()
    # a restart keeps the keys, reads the objects
    srv.start()
    try:
        assert (raw_key(srv, "root"), raw_key(srv, "master")) == (root, master)
        assert check_value(srv) == sealed
        with sdk_of(srv) as sdk:
            read_back(sdk, "first-1250000000", objects)
    finally:
        srv.stop()
    assert_log_clean(srv, {"root key": root, "master key": master})


def test_master_key_from_the_environment(tmp_path):
    env_key = os.urandom(32)
    srv = ServerProcess(tmp_path / "data", env={"DATACOFFER_MASTER_KEY": b64(env_key)})
    srv.start()
    try:
        # the root key still gets its file; the master key none: the variable is the key
        assert sorted(p.name for p in (srv.data_dir / "keys").iterdir()) == ["root.key"]
        assert SealingKey(env_key).open(check_value(srv), "check") == MASTER_CHECK
        objects = put_encrypted_objects(srv, "envkey-1250000000")
        for blob in blob_ids(srv, "envkey-1250000000"):
            header = blob_header(srv, blob)
            assert header.wrap_kind == WRAP_MASTER
            SealingKey(env_key).open(header.wrapped_key, "data-key")  # wrapped by that key
    finally:
        srv.stop()
    root = raw_key(srv, "root")
    keys = {"root key": root, "master key": env_key}
    master_path = key_file(srv, "master")

    # without the variable there is no master key: refused, and none is made
    no_env = ("DATACOFFER_MASTER_KEY",)
    assert_master_refusal(serve_fails(srv, unset=no_env), keys)
    assert not master_path.exists()
    done = subprocess.run([*BIN, "admin", "status", "--data-dir", str(srv.data_dir)],
                          capture_output=True, text=True, timeout=60,
                          env=env_of(srv, unset=no_env))
    assert done.returncode == 1 and "master key" in done.stderr, done
    assert "Traceback" not in done.stderr
    assert not master_path.exists()

    # another key in the variable: refused
    other = os.urandom(32)
    line = serve_fails(srv, env={"DATACOFFER_MASTER_KEY": b64(other)})
    assert_master_refusal(line, {**keys, "the other key": other})

    # the variable wins over a file: a wrong master.key is not even read
    master_path.parent.mkdir(exist_ok=True)
    master_path.write_bytes(base64.b64encode(other))
    srv.start()
    try:
        with sdk_of(srv) as sdk:
            read_back(sdk, "envkey-1250000000", objects)
    finally:
        srv.stop()
    assert master_path.read_bytes() == base64.b64encode(other)  # left as it was
    # and the file alone (the variable unset) is the wrong key: refused
    assert_master_refusal(serve_fails(srv, unset=no_env), {**keys, "the other key": other})
    assert_log_clean(srv, {**keys, "the other key": other})


# -- a lost or wrong master key ------------------------------------------------------------------

def test_lost_master_key_is_refused_not_replaced(tmp_path):
    srv = ServerProcess(tmp_path / "data")
    srv.start()
    try:
        objects = put_encrypted_objects(srv, "lost-1250000000")
    finally:
        srv.stop()
    path = key_file(srv, "master")
    saved = path.read_bytes()
    keys = {"root key": raw_key(srv, "root"), "master key": raw_key(srv, "master")}
    check = check_value(srv)

    path.unlink()
    assert_master_refusal(serve_fails(srv), keys)
    assert not path.exists()  # no new key was made behind the operator's back
    assert check_value(srv) == check  # nor a new check value
    done = srv.admin("status", check=False)
    assert done.returncode == 1 and "master key" in done.stderr and "Traceback" not in done.stderr
    assert_no_key_text(done.stderr, keys, "the admin command's refusal")
    assert not path.exists()

    # another key in the file: refused, and the file is left alone
    other = base64.b64encode(os.urandom(32))
    path.write_bytes(other)
    os.chmod(path, 0o600)
    assert_master_refusal(serve_fails(srv), keys)
    assert path.read_bytes() == other
    assert check_value(srv) == check
    assert srv.admin("status", check=False).returncode == 1

    # the right file again: it serves, and every object written before reads back exactly
    path.write_bytes(saved)
    srv.start()
    try:
        with sdk_of(srv) as sdk:
            read_back(sdk, "lost-1250000000", objects)
            sdk.put_object("lost-1250000000", "after", b"written after the restore")
            assert sdk.get_object("lost-1250000000", "after").read() == \
                b"written after the restore"
        assert srv.admin("status")  # the admin commands work again
    finally:
        srv.stop()
    assert_log_clean(srv, {**keys, "the other key": base64.b64decode(other)})


def test_installation_of_the_previous_version_gets_a_master_key(tmp_path):
    """The previous version had no master key and no check value: an upgraded installation
    gets both at the next start of the server (not from an admin command)."""
    srv = ServerProcess(tmp_path / "data")
    srv.start()
    try:
        with srv.new_sdk() as sdk:
            sdk.create_coffer("plain-1250000000", [REGION])
            sdk.put_object("plain-1250000000", "old", b"stored by the previous version")
    finally:
        srv.stop()
    path = key_file(srv, "master")
    old_master = raw_key(srv, "master")
    path.unlink()
    with sqlite3.connect(srv.data_dir / "metadata.db") as db:
        db.execute("DELETE FROM key_checks WHERE name = 'master'")
    assert check_value(srv) is None

    # the admin commands work on it, and make no key
    assert srv.admin("status")
    assert not path.exists() and check_value(srv) is None

    srv.start()
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert len(path.read_bytes()) == 44
        master = raw_key(srv, "master")
        assert master != old_master
        assert SealingKey(master).open(check_value(srv), "check") == MASTER_CHECK
        with sdk_of(srv) as sdk:
            assert sdk.get_object("plain-1250000000", "old").read() == \
                b"stored by the previous version"
        objects = put_encrypted_objects(srv, "new-1250000000", new_account=False)
    finally:
        srv.stop()
    srv.start()  # and the key it made is the one checked at the next start
    try:
        assert raw_key(srv, "master") == master
        with sdk_of(srv) as sdk:
            read_back(sdk, "new-1250000000", objects)
    finally:
        srv.stop()
    assert_log_clean(srv, {"root key": raw_key(srv, "root"), "master key": master,
                           "old master key": old_master})


# -- malformed keys ------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["not-base64!!", b64(b"sixteen bytes!!!")],
                         ids=["not-base64", "16-bytes"])
def test_malformed_master_key_variable_is_refused_in_one_line(tmp_path, value):
    srv = ServerProcess(tmp_path / "data")
    srv.start()
    srv.stop()
    line = serve_fails(srv, env={"DATACOFFER_MASTER_KEY": value})
    assert "DATACOFFER_MASTER_KEY" in line


def test_damaged_master_key_file_is_refused_in_one_line(tmp_path):
    srv = ServerProcess(tmp_path / "data")
    srv.start()
    srv.stop()
    path = key_file(srv, "master")
    path.write_bytes(path.read_bytes()[:-5])  # cut short, as by a bad copy
    line = serve_fails(srv)
    assert "master.key" in line


# -- the metadata database alone -----------------------------------------------------------------

def _db_files(srv: ServerProcess) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in srv.data_dir.iterdir()
            if p.name.startswith("metadata.db")}


def test_metadata_database_alone_reveals_no_key_and_no_plaintext(tmp_path):
    srv = ServerProcess(tmp_path / "data", env={"DATACOFFER_MIN_PART_SIZE": "65536"})
    srv.start()
    try:
        sdk = srv.new_sdk()
        secret_key = sdk.profile.secret_key.encode()
        srv.admin("role", "grant", "--app-id", APP_ID)
        kms_key = srv.admin("kms", "create-key", "--app-id", APP_ID, "--region", REGION)
        key_id = kms_key["KeyId"]
        sdk.create_coffer("master-1250000000", [REGION], encrypt_type=1)
        sdk.create_coffer("kms-1250000000", [REGION], encrypt_type=2, key_id=key_id,
                          key_region=REGION)
        markers: dict[str, bytes] = {}
        for coffer in ("master-1250000000", "kms-1250000000"):
            for name, size in [("tiny", 40), ("small", 5000), ("chunks", 200_000)]:
                marker = f"PLAINTEXT-{coffer[:4]}-{name}-".encode()
                markers[f"{coffer}/{name}"] = marker
                data = (marker * (size // len(marker) + 1))[:size]
                sdk.put_object(coffer, f"obj-{name}", data)
                assert sdk.get_object(coffer, f"obj-{name}").read() == data
            # a multipart object: its parts are blobs of their own
            marker = f"PLAINTEXT-{coffer[:4]}-multipart-".encode()
            markers[f"{coffer}/multipart"] = marker
            part = (marker * (70_000 // len(marker) + 1))[:70_000]
            upload = sdk.initiate_multipart_upload(coffer, "obj-multipart")
            parts = [sdk.upload_part(coffer, "obj-multipart", upload.upload_id, n, part,
                                     length=len(part)) for n in (1, 2)]
            sdk.complete_multipart_upload(coffer, "obj-multipart", upload.upload_id, parts)
            assert sdk.get_object(coffer, "obj-multipart").read() == part * 2
        sdk.close()

        root, master = raw_key(srv, "root"), raw_key(srv, "master")
        with sqlite3.connect(srv.data_dir / "metadata.db") as db:
            (sealed_material,) = db.execute(
                "SELECT sealed_material FROM kms_keys WHERE key_id = ?", (key_id,)).fetchone()
        material = SealingKey(root).open(sealed_material, f"kms:{key_id}")
        assert len(material) == 32
        # every blob's data key, unwrapped from its header
        data_keys: dict[str, bytes] = {}
        for coffer in ("master-1250000000", "kms-1250000000"):
            blobs = blob_ids(srv, coffer)
            assert len(blobs) == 5  # 3 simple objects, and the 2 parts of the multipart one
            for blob in blobs:
                header = blob_header(srv, blob)
                if coffer.startswith("master"):
                    assert header.wrap_kind == WRAP_MASTER
                    key = SealingKey(master).open(header.wrapped_key, "data-key")
                else:
                    assert (header.wrap_kind, header.key_id) == (WRAP_KMS, key_id)
                    wrapped = header.wrapped_key
                    key = AESGCM(material).decrypt(wrapped[:12], wrapped[12:], key_id.encode())
                data_keys[f"data key of blob {blob}"] = key
                stored = blob_file(srv, blob).read_bytes()
                for name, marker in markers.items():
                    assert marker not in stored, f"plaintext of {name} in blob {blob}"
        secrets = {"root key": root, "master key": master, "KMS key material": material,
                   "SecretKey": secret_key, **data_keys}

        running = _db_files(srv)
        assert "metadata.db" in running
    finally:
        srv.stop()
    stopped = _db_files(srv)

    for when, files in (("running", running), ("stopped", stopped)):
        everything = b"".join(files.values())
        # the control: the sealed material is there (these are the right files)
        assert sealed_material in everything, when
        for name, data in files.items():
            assert_no_secret(data, secrets, f"{name} ({when})")
            for obj, marker in markers.items():
                assert marker not in data, f"plaintext of {obj} in {name} ({when})"
    assert_log_clean(srv, {"root key": root, "master key": master,
                           "KMS key material": material})
