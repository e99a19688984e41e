"""Opening an installation: what the server and the admin commands refuse to run with.

An operator's mistake (a lost root key, a region removed from the configuration, a program
older than its metadata) must stop the program with a sentence saying what to do, never let it
run on and fail requests one by one.
"""

from __future__ import annotations

import sqlite3
import subprocess

import pytest

from datacoffer.meta.db import LATEST
from tests.serverproc import BIN, ServerProcess


@pytest.fixture
def installed(tmp_path):
    """A stopped installation with an account and a coffer in two regions."""
    srv = ServerProcess(tmp_path / "data")
    srv.start()
    client = srv.new_client()
    client.make_coffer("docs-1250000000", "ap-tianjin", "ap-guangzhou")
    client.close()
    srv.stop()
    return srv


def _serve_fails(srv: ServerProcess, *extra: str, env: dict[str, str] | None = None) -> str:
    cmd = [*BIN, "serve", "--data-dir", str(srv.data_dir), "--port", str(srv.port), *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                          env={**srv.env, **(env or {})})
    assert done.returncode == 1, done
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


def test_lost_root_key_is_refused_not_replaced(installed):
    key_file = installed.data_dir / "keys" / "root.key"
    saved = key_file.read_bytes()
    key_file.unlink()
    line = _serve_fails(installed)
    assert "root key" in line and "restore keys/root.key" in line
    assert not key_file.exists()  # no new key was made behind the operator's back
    done = installed.admin("status", check=False)
    assert done.returncode == 1 and "root key" in done.stderr
    key_file.write_bytes(b"QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE=")  # another key
    assert "root key" in _serve_fails(installed)
    key_file.write_bytes(saved)
    installed.start()  # the right key: it serves again
    installed.stop()


def test_region_removed_from_configuration_is_refused(installed, tmp_path):
    line = _serve_fails(installed, env={"DATACOFFER_REGIONS": "ap-tianjin=regions/ap-tianjin"})
    assert "ap-guangzhou" in line and "no longer names" in line


def test_metadata_newer_than_the_program_is_refused(installed):
    with sqlite3.connect(installed.data_dir / "metadata.db") as db:
        db.execute("UPDATE schema_version SET version = ?", (LATEST + 1,))
    line = _serve_fails(installed)
    assert f"schema version {LATEST + 1}" in line and "upgrade the program" in line
    done = installed.admin("status", check=False)
    assert done.returncode == 1 and "upgrade the program" in done.stderr
    assert "Traceback" not in done.stderr
