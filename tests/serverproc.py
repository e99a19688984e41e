"""Run a real `datacoffer serve` process for the tests, and the admin commands beside it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from datacoffer import signing
from datacoffer.client import Client, RetryPolicy

BIN = [sys.executable, "-m", "datacoffer"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """One server on 127.0.0.1 with its own data directory."""

    def __init__(self, data_dir: Path, *, env: dict[str, str] | None = None,
                 config: Path | None = None, background: bool = True) -> None:
        """`background=False` starts it with `serve --no-background`: no lifecycle,
        replication or scrub worker of its own (the tests run passes with `admin run`)."""
        self.data_dir = data_dir
        self.background = background
        self.port = free_port()
        self.env = {**os.environ, **(env or {})}
        self.config = config
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"{data_dir.name}-server.log"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def admin(self, *args: str, stdin: str | None = None, check: bool = True) -> Any:
        """Run `datacoffer admin ARGS --data-dir DIR` and parse its JSON output."""
        cmd = [*BIN, "admin", *args, "--data-dir", str(self.data_dir)]
        if self.config:
            cmd += ["--config", str(self.config)]
        done = subprocess.run(cmd, input=stdin, capture_output=True, text=True, env=self.env,
                              timeout=60)
        if check and done.returncode != 0:
            raise AssertionError(f"{cmd} failed ({done.returncode}): {done.stderr}")
        return json.loads(done.stdout) if done.returncode == 0 else done

    def create_account(self, app_id: str, uin: str) -> tuple[str, str]:
        """Create an account with the admin command; its first key (SecretId, SecretKey)."""
        doc = self.admin("account", "create", "--app-id", app_id, "--uin", uin)
        return doc["SecretId"], doc["SecretKey"]

    def new_client(self, app_id: str = "1250000000",
                   uin: str = "100000000001") -> SignedClient:
        """Create an account; a raw client signing with its first key."""
        return SignedClient(self.base_url, *self.create_account(app_id, uin))

    def new_sdk(self, app_id: str = "1250000000", uin: str = "100000000001", *,
                retry: RetryPolicy | None = None) -> Client:
        """Create an account; an SDK client (`datacoffer.client.Client`) with its first key.
        `SignedClient.of(sdk)` is a raw client with the same key."""
        return Client(self.base_url, *self.create_account(app_id, uin), retry=retry)

    def sdk_like(self, sdk: Client) -> Client:
        """An SDK client of this server with the key and retry policy of `sdk` (of another
        server on the same data)."""
        return Client(self.base_url, sdk.profile.secret_id, sdk.profile.secret_key,
                      retry=sdk.retry)

    def start(self) -> None:
        cmd = [*BIN, "serve", "--data-dir", str(self.data_dir), "--port", str(self.port)]
        if self.config:
            cmd += ["--config", str(self.config)]
        if not self.background:
            cmd.append("--no-background")
        log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the process
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited: {self.log_path.read_text()[-3000:]}")
            try:
                httpx.get(self.base_url + "/", timeout=1)
                return
            except httpx.TransportError:
                time.sleep(0.05)
        raise AssertionError("server did not start in 30 s")

    def kill(self) -> None:
        """SIGKILL: no chance to clean up, like a crash or a power cut."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self.proc = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class SignedClient:
    """Signs every request with the project's own signer (`datacoffer.signing`)."""

    def __init__(self, base_url: str, secret_id: str, secret_key: str) -> None:
        self.base_url = base_url
        self.secret_id = secret_id
        self.secret_key = secret_key
        self.http = httpx.Client(base_url=base_url, timeout=120)

    @classmethod
    def of(cls, sdk: Client) -> SignedClient:
        """A raw client with the key of an SDK client, for requests whose bytes the test
        controls."""
        return cls(sdk.endpoint, sdk.profile.secret_id, sdk.profile.secret_key)

    def request(self, method: str, path: str, *, params: dict[str, str] | None = None,
                headers: dict[str, str] | None = None, content: Any = None,
                sign_headers: tuple[str, ...] = ("host",), **kwargs: Any) -> httpx.Response:
        """`path` is the decoded path (e.g. "/c-1250000000/a b.txt"); it is encoded here."""
        headers = dict(headers or {})
        host = self.base_url.split("://", 1)[1]
        to_sign = {"host": host, **{k.lower(): v for k, v in headers.items()
                                    if k.lower() in sign_headers}}
        fields = signing.sign(self.secret_id, self.secret_key, method, path, params, to_sign)
        headers["Authorization"] = signing.authorization_header(fields)
        url = signing.urlencode(path).replace("%2F", "/")
        return self.http.request(method, url, params=params, headers=headers, content=content,
                                 **kwargs)

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.request("GET", path, **kw)

    def put(self, path: str, **kw: Any) -> httpx.Response:
        return self.request("PUT", path, **kw)

    def head(self, path: str, **kw: Any) -> httpx.Response:
        return self.request("HEAD", path, **kw)

    def delete(self, path: str, **kw: Any) -> httpx.Response:
        return self.request("DELETE", path, **kw)

    def make_coffer(self, name: str, *regions: str) -> None:
        body = json.dumps({"Locations": {"Location": list(regions or ["ap-tianjin"])}})
        r = self.put(f"/{name}", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 200, r.text

    def close(self) -> None:
        self.http.close()


#: for SDK clients of tests that must see every answer as the server gave it: no retry of
#: InternalError, AlreadyLock or DataSynchronization, nor of a refused connection
NO_RETRY = RetryPolicy(attempts=1)
