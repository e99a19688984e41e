"""A real PyKMIP key manager for the tests: its certificates, and its server process.

`make_certs` writes a test CA, a server certificate for 127.0.0.1/localhost (serverAuth) and a
client certificate (clientAuth: the PyKMIP server requires it, and the client certificate's
CN owns the keys it creates). `KmipServerProcess` runs PyKMIP's `KmipServer` in a process
group of its own (the server forks a multiprocessing Manager child that outlives a SIGKILL of
its parent alone), on a fixed port, with its SQLite database in its work directory, so a
restart on the same port keeps every key.

The server itself runs this file as a script:

    python tests/kmip_server.py PORT WORK_DIR CERT_DIR

It reads no /etc/pykmip/server.conf and writes its log to WORK_DIR/server.log.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

HOST = "127.0.0.1"
#: the CN of the client certificate: the KMIP "user" that owns the keys it creates
CLIENT_CN = "datacoffer-test-client"


@dataclass(frozen=True)
class Certs:
    """PEM files: the CA, the server's certificate and key, the client's certificate and key."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _write_pem(path: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
    path.with_suffix(".key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    path.with_suffix(".key").chmod(0o600)
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def make_certs(directory: Path, server_names: list[x509.GeneralName] | None = None) -> Certs:
    """A CA and the server's and client's certificates (ECDSA P-256, valid for a day); the
    server's is for 127.0.0.1 and localhost unless `server_names` says otherwise."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "datacoffer-test-kmip-ca")])

    def builder(subject: x509.Name, public_key: Any) -> x509.CertificateBuilder:
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name)
                .public_key(public_key).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1)))

    ca = (builder(ca_name, ca_key.public_key())
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(
              digital_signature=True, key_cert_sign=True, crl_sign=True,
              content_commitment=False, key_encipherment=False, data_encipherment=False,
              key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    _write_pem(directory / "ca", ca_key, ca)

    def leaf(name: str, cn: str, usage: x509.ObjectIdentifier,
             sans: list[x509.GeneralName]) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        b = (builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]), key.public_key())
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                 ca_key.public_key()), critical=False))
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        _write_pem(directory / name, key, b.sign(ca_key, hashes.SHA256()))

    leaf("server", HOST, ExtendedKeyUsageOID.SERVER_AUTH, server_names or [
        x509.IPAddress(ipaddress.ip_address(HOST)), x509.DNSName("localhost")])
    leaf("client", CLIENT_CN, ExtendedKeyUsageOID.CLIENT_AUTH, [])
    return Certs(ca=directory / "ca.crt", server_cert=directory / "server.crt",
                 server_key=directory / "server.key", client_cert=directory / "client.crt",
                 client_key=directory / "client.key")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class KmipServerProcess:
    """A PyKMIP server on 127.0.0.1; the port and the database survive `restart()`."""

    def __init__(self, work_dir: Path, certs: Certs, *, port: int | None = None) -> None:
        self.work_dir = work_dir
        self.certs = certs
        self.port = port or _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        work_dir.mkdir(parents=True, exist_ok=True)

    @property
    def database(self) -> Path:
        return self.work_dir / "pykmip.db"

    @property
    def log_path(self) -> Path:
        return self.work_dir / "server.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 30.0) -> None:
        """Start the server and wait until its port accepts connections."""
        assert self.proc is None, "already started"
        cmd = [sys.executable, str(Path(__file__).resolve()), str(self.port),
               str(self.work_dir), str(self.certs.ca.parent)]
        with open(self.work_dir / "stdout.log", "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.proc = None
                raise RuntimeError(f"the KMIP server exited ({code}): {self.output()[-3000:]}")
            try:
                socket.create_connection((HOST, self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the KMIP server did not listen on {self.port} in {timeout} s")

    def stop(self, grace: float = 1.0) -> None:
        """SIGINT (the serve loop stops at once), then SIGKILL to the whole process group:
        nothing of the server is left, and its port refuses connections."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(grace)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def restart(self) -> None:
        """Stop and start again on the same port, with the same database (the same keys)."""
        self.stop()
        self.start()

    def pause(self) -> None:
        """SIGSTOP the process group: it accepts TCP connections (the kernel does) but never
        answers, like a hung key manager."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGCONT)

    def output(self) -> str:
        text = ""
        for name in ("stdout.log", "server.log"):
            path = self.work_dir / name
            if path.exists():
                text += path.read_text(errors="replace")
        return text

    def client(self, timeout: int = 10) -> Any:
        """A PyKMIP `ProxyKmipClient` with the client certificate (KMIP 1.4), not yet
        connected: use it as a context manager (`with server.client() as c:`)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from kmip import enums
            from kmip.pie.client import ProxyKmipClient
        empty = self.work_dir / "client.conf"
        empty.touch()  # an existing empty file: no ~/.pykmip or /etc/pykmip is read
        c = ProxyKmipClient(
            hostname=HOST, port=self.port, cert=str(self.certs.client_cert),
            key=str(self.certs.client_key), ca=str(self.certs.ca), config_file=str(empty),
            kmip_version=enums.KMIPVersion.KMIP_1_4)
        c.proxy.timeout = timeout
        return c

    def __enter__(self) -> KmipServerProcess:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _serve(port: int, work_dir: Path, cert_dir: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from kmip.services.server import KmipServer
    server = KmipServer(
        hostname=HOST,
        port=port,
        certificate_path=str(cert_dir / "server.crt"),
        key_path=str(cert_dir / "server.key"),
        ca_path=str(cert_dir / "ca.crt"),
        auth_suite="TLS1.2",  # "Basic" is TLS 1.0, which OpenSSL 3 refuses
        config_path=None,  # else /etc/pykmip/server.conf, an error when it is missing
        log_path=str(work_dir / "server.log"),
        policy_path=None,
        enable_tls_client_auth=True,
        logging_level="INFO",
        database_path=str(work_dir / "pykmip.db"),
        live_policies=False,
    )
    with server:
        server.serve()


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(f"usage: {sys.argv[0]} PORT WORK_DIR CERT_DIR")
    _serve(int(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
