"""`datacoffer serve`: run the server."""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path

import click

from datacoffer.cli.options import data_dir_option, fail, open_installation, settings
from datacoffer.config import Settings

FIRST_START = """\
Data Coffer: a new installation was created in {data_dir}
(its keys are in {data_dir}/keys/: root.key and master.key; back them up, apart from
the data).

Create the first account (its SecretId and SecretKey go to account.json; keep it secret):

  {prog} admin account create --app-id 1250000000 --uin 100000000001 \\
      --data-dir {data_dir} > account.json

Then, from this directory, give the client the endpoint and that key, make a coffer and store
a file:

  {prog} configure --endpoint {scheme}://{host}:{port} --credentials-json account.json
  {prog} mb dc://mycoffer-1250000000 --location {region}
  echo "hello, coffer" > hello.txt
  {prog} cp hello.txt dc://mycoffer-1250000000/
  {prog} cat dc://mycoffer-1250000000/hello.txt
"""


def _invocation() -> str:
    """How the operator's shell can run this program: the bare name when it resolves to this
    installation (its virtual environment is active), else a path."""
    here = Path(sys.executable).parent
    found = shutil.which("datacoffer")
    if found and Path(found).parent == here:
        return "datacoffer"
    relative = os.path.relpath(here / "datacoffer")
    return relative if not relative.startswith("..") else str(here / "datacoffer")


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        stream=sys.stderr, level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@click.command()
@data_dir_option
@click.option("--host", default=None, help="Address to listen on (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port to listen on (default 8080).")
@click.option("--tls-cert", type=click.Path(dir_okay=False, exists=True), default=None,
              help="PEM certificate: serve HTTPS (with --tls-key).")
@click.option("--tls-key", type=click.Path(dir_okay=False, exists=True), default=None,
              help="PEM private key of --tls-cert.")
@click.option("--no-background", is_flag=True,
              help="Run no background worker (lifecycle sweeper, replication, scrub): "
                   "`datacoffer admin run lifecycle|replication|scrub` does one pass "
                   "instead.")
def serve(data_dir: str | None, config_file: str | None, host: str | None, port: int | None,
          tls_cert: str | None, tls_key: str | None, no_background: bool) -> None:
    """Run the Data Coffer server.

    With no option it runs the embedded default: SQLite metadata and three local regions
    (ap-tianjin, ap-shanghai, ap-guangzhou) under ./datacoffer-data, on 127.0.0.1:8080.

    \b
    Examples:
      datacoffer serve
      datacoffer serve --data-dir /srv/coffer --host 0.0.0.0 --port 443 \\
          --tls-cert cert.pem --tls-key key.pem
    """
    conf: Settings = settings(data_dir, config_file, host=host, port=port, tls_cert=tls_cert,
                              tls_key=tls_key)
    if bool(conf.tls_cert) != bool(conf.tls_key):
        fail("--tls-cert and --tls-key go together", 2)
    _configure_logging(conf.log_level)
    inst = open_installation(conf, create=True)
    scheme = "https" if conf.tls_cert else "http"
    if inst.is_new:
        prog = _invocation()
        example_host = "127.0.0.1" if conf.host in ("0.0.0.0", "::", "") else conf.host
        click.echo(FIRST_START.format(data_dir=conf.data_dir, host=example_host,
                                      port=conf.port, scheme=scheme, prog=prog,
                                      region=next(iter(conf.regions))), err=True)
    click.echo(f"Data Coffer listening on {scheme}://{conf.host}:{conf.port} "
               f"(data in {conf.data_dir}, regions: {', '.join(conf.regions)})", err=True)
    # Imported here: the admin commands share this program and need none of the server.
    import uvicorn

    from datacoffer.http.app import DataCofferApp

    uvicorn.run(
        DataCofferApp(inst, background=not no_background), host=conf.host, port=conf.port,
        loop="uvloop", http="httptools",
        # X-Forwarded-For is believed only from trusted_proxies, by the server itself
        proxy_headers=False, lifespan="on", server_header=False, access_log=False,
        log_config=None,
        ssl_certfile=conf.tls_cert or None, ssl_keyfile=conf.tls_key or None,
        timeout_graceful_shutdown=10)
