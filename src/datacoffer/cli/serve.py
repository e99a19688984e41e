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

Create the first account (prints its SecretId and SecretKey as JSON):

  {prog} admin account create --app-id 1250000000 --uin 100000000001 --data-dir {data_dir}

Then, with SECRET_ID and SECRET_KEY set from that output, create a coffer and store a file:

{python} - <<'PY'
import os, urllib.request
from datacoffer.signing import authorization_header, sign
def call(method, path, body=b""):
    auth = sign(os.environ["SECRET_ID"], os.environ["SECRET_KEY"], method, path,
                headers={{"host": "{host}:{port}"}})
    req = urllib.request.Request(
        "{scheme}://{host}:{port}" + path, data=body or None, method=method,
        headers={{"Authorization": authorization_header(auth)}})
    return urllib.request.urlopen(req).read()
call("PUT", "/mycoffer-1250000000", b'{{"Locations": {{"Location": ["ap-tianjin"]}}}}')
call("PUT", "/mycoffer-1250000000/hello.txt", b"hello, coffer")
print(call("GET", "/mycoffer-1250000000/hello.txt"))
PY
"""


def _invocation() -> tuple[str, str]:
    """How the operator's shell can run this program and its Python: the bare names when
    they resolve to this installation (its virtual environment is active), else paths."""
    here = Path(sys.executable).parent

    def command(name: str) -> str:
        found = shutil.which(name)
        if found and Path(found).parent == here:
            return name
        path = here / name
        relative = os.path.relpath(path)
        return relative if not relative.startswith("..") else str(path)

    return command("datacoffer"), command("python")


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
              help="Run no background worker (lifecycle, replication, scrub).")
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
        prog, python = _invocation()
        example_host = "127.0.0.1" if conf.host in ("0.0.0.0", "::", "") else conf.host
        click.echo(FIRST_START.format(data_dir=conf.data_dir, host=example_host,
                                      port=conf.port, scheme=scheme, prog=prog, python=python),
                   err=True)
    click.echo(f"Data Coffer listening on {scheme}://{conf.host}:{conf.port} "
               f"(data in {conf.data_dir}, regions: {', '.join(conf.regions)})", err=True)
    # Imported here: the admin commands share this program and need none of the server.
    import uvicorn

    from datacoffer.http.app import DataCofferApp

    uvicorn.run(
        DataCofferApp(inst), host=conf.host, port=conf.port, loop="uvloop", http="httptools",
        lifespan="on", server_header=False, access_log=False, log_config=None,
        ssl_certfile=conf.tls_cert or None, ssl_keyfile=conf.tls_key or None,
        timeout_graceful_shutdown=10)
