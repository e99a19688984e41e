"""Concurrent writers (api.md PutObject, errors.md ObjectAlreadyUploading/AlreadyLock,
service.md "Scale"): the key reservation lives in the metadata store, so it holds between
requests of one server and between server processes sharing one data directory."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from datacoffer.client import Client, errors
from tests.serverproc import ServerProcess, SignedClient, free_port
from tests.test_durability import (
    OWN_APP_ID,
    MiB,
    RawUpload,
    check_error,
    db_rows,
    listed,
    new_sdk,
    stream_put,
    tmp_files,
    wait_reserved,
    writing_rows,
)

LOSING_CODES = ("ObjectAlreadyUploading", "ObjectAlreadyExistsOwnedByYou")


def race(clients: list[SignedClient], path: str, bodies: list[bytes], *, chunk: int,
         pause: float) -> list:
    """One PutObject of `path` per client and body, started together."""
    barrier = threading.Barrier(len(bodies))

    def one(i: int):
        barrier.wait()
        return stream_put(clients[i], path, bodies[i], chunk=chunk, pause=pause)

    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(one, range(len(bodies))))


def check_one_winner(answers: list, bodies: list[bytes]) -> bytes:
    """Exactly one 200; every other answer a 409 with a code saying the key is taken.
    Returns the winner's body."""
    winners = [i for i, a in enumerate(answers) if a.status_code == 200]
    assert len(winners) == 1, [(a.status_code, a.headers.get("x-cdcs-error-code"))
                               for a in answers]
    (w,) = winners
    assert answers[w].headers["etag"] == f'"{hashlib.md5(bodies[w]).hexdigest()}"'
    assert answers[w].content == b""
    for i, a in enumerate(answers):
        if i != w:
            code = a.headers.get("x-cdcs-error-code")
            assert code in LOSING_CODES, (a.status_code, a.headers, a.content)
            check_error(a, 409, code)
    return bodies[w]


def check_stored(sdk: Client, coffer: str, key: str, data: bytes) -> None:
    with sdk.get_object(coffer, key) as r:
        assert r.read() == data
    assert r.info.etag == hashlib.md5(data).hexdigest()
    assert r.info.sha256 == hashlib.sha256(data).hexdigest()


# -- 6. two PutObjects of one key at once ---------------------------------------------------


def test_two_streaming_puts_of_one_key_one_wins(client, sdk, coffer):
    path = f"/{coffer}/contested.bin"
    bodies = [os.urandom(8 * MiB), os.urandom(8 * MiB)]
    answers = race([client, client], path, bodies, chunk=256 * 1024, pause=0.005)
    winner = check_one_winner(answers, bodies)
    check_stored(sdk, coffer, "contested.bin", winner)
    assert list(listed(sdk, coffer)) == ["contested.bin"]


def test_small_puts_of_one_key_race_many_times(client, sdk, coffer):
    for round_ in range(10):
        path = f"/{coffer}/round-{round_}"
        bodies = [os.urandom(64 * 1024 + n) for n in range(3)]
        answers = race([client] * 3, path, bodies, chunk=64 * 1024 + 8, pause=0)
        winner = check_one_winner(answers, bodies)
        check_stored(sdk, coffer, f"round-{round_}", winner)
    assert sorted(listed(sdk, coffer)) == [f"round-{n}" for n in range(10)]


# -- 7. two server processes on one data directory ------------------------------------------


def test_two_processes_on_one_data_dir_share_the_reservation(two_servers):
    a, b = two_servers
    a.start()
    sa = new_sdk(a)
    sb = b.sdk_like(sa)
    ca, cb = SignedClient.of(sa), SignedClient.of(sb)  # for uploads the test paces itself
    coffer = f"shared-{OWN_APP_ID}"
    sa.create_coffer(coffer, ["ap-tianjin"])

    # An upload held open on A, then B starts: B's start-up recovery must not take the key of
    # a live writer in another process, and B refuses the key while A streams.
    path = f"/{coffer}/held.bin"
    data = os.urandom(3 * MiB)
    up = RawUpload(ca, path, len(data))
    try:
        up.send(data[:MiB])
        wait_reserved(a.data_dir, coffer, "held.bin")
        b.start()
        assert len(writing_rows(a.data_dir)) == 1
        assert len(tmp_files(a.data_dir)) == 1
        with pytest.raises(errors.ObjectAlreadyUploading):
            sb.put_object(coffer, "held.bin", b"from B")
        with pytest.raises(errors.ObjectAlreadyUploading):
            sa.put_object(coffer, "held.bin", b"from A")
        with pytest.raises(errors.ObjectNotExists):
            sb.get_object(coffer, "held.bin")
        up.send(data[MiB:])
        answer = up.response()
    finally:
        up.close()
    assert answer.status_code == 200, answer
    assert answer.headers["etag"] == f'"{hashlib.md5(data).hexdigest()}"'
    check_stored(sb, coffer, "held.bin", data)
    check_stored(sa, coffer, "held.bin", data)
    with pytest.raises(errors.ObjectAlreadyExistsOwnedByYou):
        sb.put_object(coffer, "held.bin", b"from B")

    # Races through both servers: exactly one writer wins, and both serve its bytes.
    for round_ in range(5):
        path = f"/{coffer}/race-{round_}"
        bodies = [os.urandom(256 * 1024 + n) for n in range(4)]
        answers = race([ca, cb, ca, cb], path, bodies, chunk=64 * 1024, pause=0.002)
        winner = check_one_winner(answers, bodies)
        check_stored(sa, coffer, f"race-{round_}", winner)
        check_stored(sb, coffer, f"race-{round_}", winner)
    assert sorted(listed(sb, coffer)) == ["held.bin", *[f"race-{n}" for n in range(5)]]
    assert listed(sa, coffer) == listed(sb, coffer)
    assert writing_rows(a.data_dir) == []
    assert tmp_files(a.data_dir) == []
    for c in (ca, cb, sa, sb):
        c.close()


# -- 8. DeleteCoffer racing a write ---------------------------------------------------------


def _delete(client: SignedClient, coffer: str):
    started = time.monotonic()
    r = client.delete(f"/{coffer}")
    return r, time.monotonic() - started


def test_delete_coffer_racing_a_write(server, client, sdk, coffer):
    path = f"/{coffer}/streaming.bin"
    data = os.urandom(4 * MiB)
    up = RawUpload(client, path, len(data))
    try:
        up.send(data[:MiB])
        wait_reserved(server.data_dir, coffer, "streaming.bin")
        with pytest.raises(errors.ObjectAlreadyUploading):
            sdk.put_object(coffer, "streaming.bin", b"x")
        r, took = _delete(client, coffer)
        check_error(r, 409, "AlreadyLock")
        assert took < 1.0  # "never a wait of more than a second"
        up.send(data[MiB:])
        answer = up.response()
    finally:
        up.close()
    assert answer.status_code == 200, answer
    r, _ = _delete(client, coffer)
    check_error(r, 409, "CofferNotEmpty")
    check_stored(sdk, coffer, "streaming.bin", data)
    assert list(listed(sdk, coffer)) == ["streaming.bin"]


def test_delete_coffer_after_an_abandoned_write_succeeds(server, client, sdk, coffer_name):
    """The lock a write holds on its coffer goes with the write: once the client has gone and
    its reservation is dropped, the (still empty) coffer can be deleted."""
    sdk.create_coffer(coffer_name, ["ap-tianjin"])
    path = f"/{coffer_name}/abandoned.bin"
    up = RawUpload(client, path, 4 * MiB)
    try:
        up.send(os.urandom(MiB))
        wait_reserved(server.data_dir, coffer_name, "abandoned.bin")
        with pytest.raises(errors.ObjectAlreadyUploading):
            sdk.put_object(coffer_name, "abandoned.bin", b"x")
        r, took = _delete(client, coffer_name)
        check_error(r, 409, "AlreadyLock")
        assert took < 1.0
    finally:
        up.close()
    deadline = time.monotonic() + 15
    while True:
        r, _ = _delete(client, coffer_name)
        if r.status_code != 409 or time.monotonic() > deadline:
            break
        check_error(r, 409, "AlreadyLock")
        time.sleep(0.1)
    assert r.status_code == 204, r.text
    assert r.content == b""
    with pytest.raises(errors.NoSuchCoffer):
        sdk.get_coffer(coffer_name)


# -- 9. a live writer keeps its lease -------------------------------------------------------


def test_live_writer_keeps_its_reservation_past_the_lease(tmp_path):
    """With `lease_seconds = 1` a reservation lapses 3 s after its last renewal; a writer that
    is alive and streaming renews it, so after more than 3 s another writer — in the same
    process or in another process on the same data directory — is still refused."""
    config = tmp_path / "datacoffer.toml"
    config.write_text("lease_seconds = 1\n")
    a = ServerProcess(tmp_path / "data", config=config)
    b = ServerProcess(tmp_path / "data", config=config)
    while b.port == a.port:
        b.port = free_port()
    b.log_path = tmp_path / "data-server-b.log"
    try:
        a.start()  # creates the installation; then B starts while the account is made
        with ThreadPoolExecutor(2) as pool:
            b_started = pool.submit(b.start)
            sa = new_sdk(a)
            b_started.result()
        sb = b.sdk_like(sa)
        ca = SignedClient.of(sa)  # for the upload the test paces itself
        coffer = f"lease-{OWN_APP_ID}"
        sa.create_coffer(coffer, ["ap-tianjin"])
        path = f"/{coffer}/slow.bin"
        data = os.urandom(MiB)
        piece = 64 * 1024

        up = RawUpload(ca, path, len(data))
        try:
            started = time.monotonic()
            up.send(data[:piece])
            wait_reserved(a.data_dir, coffer, "slow.bin")
            (first_lease,) = [lease for _, _, lease in writing_rows(a.data_dir)]
            sent = piece
            while time.monotonic() - started < 4.5:  # a slow upload: a trickle of bytes
                time.sleep(0.5)
                up.send(data[sent:sent + 4096])
                sent += 4096
            assert not up.answered()
            with pytest.raises(errors.ObjectAlreadyUploading):
                sa.put_object(coffer, "slow.bin", b"same process")
            with pytest.raises(errors.ObjectAlreadyUploading):
                sb.put_object(coffer, "slow.bin", b"other process")
            ((_, holder, lease),) = writing_rows(a.data_dir)
            now_ms = int(time.time() * 1000)
            assert lease > now_ms  # renewed: still running
            assert lease >= first_lease + 2000  # renewed several times since the start
            assert holder.split(":")[1] == str(a.proc.pid)
            up.send(data[sent:])
            answer = up.response()
        finally:
            up.close()
        assert answer.status_code == 200, answer
        check_stored(sb, coffer, "slow.bin", data)
        assert db_rows(a.data_dir, "SELECT state, holder FROM objects") == [("stored", "")]
        for c in (ca, sa, sb):
            c.close()
    finally:
        b.stop()
        a.stop()
