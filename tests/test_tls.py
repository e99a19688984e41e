"""`datacoffer serve --tls-cert FILE --tls-key FILE` serves HTTPS: a signed client that
trusts the certificate stores and reads an object over TLS, and plain HTTP is not answered."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import subprocess
import time

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.serverproc import BIN, ServerProcess, SignedClient, free_port


def _self_signed(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_serve_over_tls(tmp_path):
    cert, key = _self_signed(tmp_path)
    srv = ServerProcess(tmp_path / "data")  # used for its admin command and data directory
    port = free_port()
    log = open(tmp_path / "tls.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([*BIN, "serve", "--data-dir", str(srv.data_dir), "--port", str(port),
                             "--tls-cert", str(cert), "--tls-key", str(key)],
                            stdout=log, stderr=subprocess.STDOUT, env=srv.env)
    trust = ssl.create_default_context(cafile=str(cert))
    base = f"https://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (tmp_path / "tls.log").read_text()
            try:
                r = httpx.get(base + "/", verify=trust, timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "no HTTPS answer in 30 s"
                time.sleep(0.05)
        assert (r.status_code, r.headers["x-cdcs-error-code"]) == (401, "AuthFailed")
        doc = srv.admin("account", "create", "--app-id", "1250000000", "--uin", "100000000001")
        client = SignedClient(base, doc["SecretId"], doc["SecretKey"])
        client.http = httpx.Client(base_url=base, verify=trust, timeout=60)
        client.make_coffer("tls-1250000000")
        assert client.put("/tls-1250000000/k", content=b"over TLS").status_code == 200
        r = client.get("/tls-1250000000/k")
        assert (r.status_code, r.content) == (200, b"over TLS")
        client.close()
        with pytest.raises(httpx.TransportError):  # plain HTTP to a TLS port gets no answer
            httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()
