"""A throw-away `datacoffer serve` for the benchmark: own temp dir, free port, one account
(and, for EncryptType 2, its service role grant and a KMS key, made with the admin commands).

The server runs in its own session (process group) so that a Ctrl-C in the terminal reaches only
the benchmark, which then stops the server itself and removes the directory.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

HOST = "127.0.0.1"  # the benchmark never listens or connects anywhere else
APP_ID = "1250000000"
UIN = "100000000001"
#: The region of the bench's coffers (the server's default configuration has it first) and of
#: the customer key of its EncryptType 2 coffer.
REGION = "ap-tianjin"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0


def free_port() -> int:
    """A port that was free a moment ago (the server binds it right after)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Account:
    app_id: str
    uin: str
    secret_id: str
    secret_key: str


@dataclass(frozen=True)
class CustomerKey:
    """A key in the built-in KMS, as `datacoffer admin kms create-key` prints it."""

    key_id: str
    region: str


class BenchServer:
    """Start on enter, stop and clean up on exit (also after Ctrl-C or an error)."""

    def __init__(self, parent: Path | None = None, *, keep: bool = False) -> None:
        self.parent = parent
        self.keep = keep
        self.root: Path | None = None
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.account: Account | None = None

    # -- paths ---------------------------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        assert self.root is not None
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        assert self.root is not None
        return self.root / "server.log"

    @property
    def host_header(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"http://{self.host_header}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    # -- life cycle ----------------------------------------------------------------------------

    def __enter__(self) -> BenchServer:
        if self.parent is not None:
            self.parent.mkdir(parents=True, exist_ok=True)
        self.root = Path(tempfile.mkdtemp(prefix="datacoffer-bench-", dir=self.parent))
        try:
            self.start()
            self.account = self._create_account()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
        if self.root is not None and not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)

    def start(self) -> None:
        """Run the server and wait until it answers HTTP (any status)."""
        cmd = [sys.executable, "-m", "datacoffer", "serve", "--data-dir", str(self.data_dir),
               "--host", HOST, "--port", str(self.port)]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited at start:\n{self.log_tail()}")
            try:
                httpx.get(self.base_url + "/", timeout=1)
                return
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError(f"the server did not answer within {START_TIMEOUT:.0f} s:\n"
                           f"{self.log_tail()}")

    def _admin(self, *args: str) -> dict[str, Any]:
        """Run `datacoffer admin ARGS --data-dir <data dir>` (beside the running server, as an
        operator would) and return the JSON document it prints."""
        cmd = [sys.executable, "-m", "datacoffer", "admin", *args,
               "--data-dir", str(self.data_dir)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"datacoffer admin {' '.join(args[:2])} failed "
                               f"({done.returncode}): {done.stderr}")
        doc: dict[str, Any] = json.loads(done.stdout)
        return doc

    def _create_account(self) -> Account:
        doc = self._admin("account", "create", "--app-id", APP_ID, "--uin", UIN)
        return Account(doc["AppId"], doc["Uin"], doc["SecretId"], doc["SecretKey"])

    def customer_key(self, region: str = REGION) -> CustomerKey:
        """What an EncryptType 2 coffer needs (docs/encryption.md): the account grants the
        service role, and a new customer key of the account in `region`, in the built-in KMS."""
        assert self.account is not None
        self._admin("role", "grant", "--app-id", self.account.app_id)
        doc = self._admin("kms", "create-key", "--app-id", self.account.app_id,
                          "--region", region)
        return CustomerKey(doc["KeyId"], doc["KeyRegion"])

    def stop(self) -> None:
        """SIGTERM (graceful), then SIGKILL if it hangs; always reaps the process."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with _ignoring_sigint():
            proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no server log)"

    def peak_rss_mib(self) -> float | None:
        """The server's peak resident memory (VmHWM), Linux only."""
        if self.proc is None:
            return None
        try:
            with open(f"/proc/{self.proc.pid}/status") as fh:
                for line in fh:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        return None

    def cpu_seconds(self) -> float | None:
        """User+system CPU time of the server process (all its threads), Linux only."""
        if self.proc is None:
            return None
        try:
            with open(f"/proc/{self.proc.pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        # After "pid (comm)": state is fields[0], utime is field 14 of the line -> index 11.
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _ignoring_sigint:
    """A second Ctrl-C while stopping must not leave the server running."""

    def __enter__(self) -> None:
        try:
            self.previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        except ValueError:  # not the main thread
            self.previous = None

    def __exit__(self, *exc: object) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
