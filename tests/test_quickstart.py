"""The README's quick start, run as it is written.

The ```sh block between `<!-- quickstart:begin … -->` and `<!-- quickstart:end -->` runs
under `bash -e -x` (with `set -euo pipefail`) in a fresh directory whose `.venv` is the venv of
the running interpreter, with HOME in that directory. Only two things change: the endpoint
(the test's own server, started as README step 1 starts it but on a free port) and the size
of the file, 80 MiB instead of 1 GiB (still over the 64 MiB threshold, so it goes up in
five 16 MiB parts).
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.serverproc import free_port

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"^<!-- quickstart:begin[^\n]*-->\n```sh\n(.*?)^```\n<!-- quickstart:end -->$",
                   re.MULTILINE | re.DOTALL)
#: README step 2, run as it is in the same directory (the admin commands default to
#: ./datacoffer-data, where `datacoffer serve` made the installation)
STEP_2 = ".venv/bin/datacoffer admin account create --app-id 1250000000 " \
         "--uin 100000000001 > account.json"
ENDPOINT = "http://127.0.0.1:8080"
BIG = "head -c 1G"
SMALL = "head -c 80M"
SIZE = 80 * 1024 * 1024


def quickstart_block() -> str:
    text = README.read_text("utf-8")
    found = BLOCK.search(text)
    if found is None:
        pytest.fail("README.md has no ```sh block between '<!-- quickstart:begin … -->' and "
                    "'<!-- quickstart:end -->'")
    return found.group(1)


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DATACOFFER_", "VIRTUAL_ENV"))}
    env.pop("XDG_CONFIG_HOME", None)  # the profile must land in $HOME/.config
    return {**env, "HOME": str(home), **extra}


def test_readme_quick_start(tmp_path: Path) -> None:
    block = quickstart_block()
    for original in (ENDPOINT, BIG):
        assert original in block, f"the quick start no longer contains {original!r}"
    assert STEP_2 in README.read_text("utf-8"), "README step 2 changed: update STEP_2"
    if sys.prefix == sys.base_prefix or not (Path(sys.prefix) / "bin" / "activate").is_file():
        pytest.skip("the tests do not run in a venv: there is no .venv to activate")

    work = tmp_path / "work"
    work.mkdir()
    (work / ".venv").symlink_to(sys.prefix, target_is_directory=True)
    env = clean_env(work)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    script = work / "quickstart.sh"
    script.write_text("set -euo pipefail\n" + block.replace(ENDPOINT, url).replace(BIG, SMALL))

    # README step 1 (`make serve` is `.venv/bin/datacoffer serve` in this directory)
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 - closed in the finally
    server = subprocess.Popen(
        [str(work / ".venv" / "bin" / "datacoffer"), "serve", "--data-dir", "./datacoffer-data",
         "--port", str(port)], cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()
            try:
                httpx.get(url + "/", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the server did not start in 30 s"
                time.sleep(0.05)
        # README step 2
        step2 = subprocess.run(["bash", "-e", "-c", STEP_2], cwd=work, env=env,
                               capture_output=True, text=True, timeout=60)
        assert step2.returncode == 0, step2.stderr
        # README step 3: the quick start block
        done = subprocess.run(["bash", "-e", "-x", str(script)], cwd=work,
                              env={**env, "DATACOFFER_PROGRESS": "1"},
                              capture_output=True, text=True, timeout=600)
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)
        log.close()

    assert done.returncode == 0, (done.stdout, done.stderr[-5000:])
    out = done.stdout.splitlines()
    profiles = work / ".config" / "datacoffer" / "profiles.toml"
    assert f"saved profile 'default' in {profiles} (checked: you own 0 coffers)" in out
    assert profiles.is_file()
    assert stat.S_IMODE(profiles.stat().st_mode) == 0o600
    assert "made dc://mycoffer-1250000000/ in ap-tianjin, ap-shanghai" in out
    copied = [line for line in out if line.startswith("copied 1 file (80.0 MiB) in ")]
    assert len(copied) == 2, out
    assert any(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d +83886080  backups/big\.bin  "
                            r"[0-9a-f]{32}-5", line) for line in out), out
    assert "identical" in out
    assert f"Size          {SIZE}" in out
    assert "Parts         5" in out
    assert "Key           backups/big.bin" in out
    assert "total (1 file)" in done.stderr
    assert (work / "restored.bin").stat().st_size == SIZE
