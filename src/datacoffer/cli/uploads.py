"""`datacoffer uploads ls|abort`: multipart uploads in progress (interrupted ones, mostly)."""

from __future__ import annotations

import click

from datacoffer.cli.coffers import when
from datacoffer.cli.remote import Remote, RemoteType
from datacoffer.cli.session import Session, client_command
from datacoffer.client import errors
from datacoffer.client.transfer import find_upload


@click.group("uploads")
def uploads() -> None:
    """Multipart uploads in progress. An interrupted `cp` leaves its upload here: running the
    same `cp` again resumes it, `uploads abort` discards it and frees the key."""


@uploads.command("ls")
@click.argument("where", type=RemoteType())
@client_command
def list_uploads(session: Session, where: Remote) -> None:
    """List the uploads in progress in a coffer, under an optional key prefix.

    \b
    Example:
      datacoffer uploads ls dc://reports-1250000000/backups/
    """
    found = list(session.client.iter_uploads(where.coffer, prefix=where.key))
    if session.json:
        session.emit([{"Key": u.key, "UploadId": u.upload_id, "Initiated": u.initiated}
                      for u in found])
    for u in found:
        started = when(u.initiated) if u.initiated else "-"
        session.say(f"{started}  {u.upload_id}  {u.key}")


@uploads.command("abort")
@click.argument("target", type=RemoteType(need_key=True))
@click.option("--upload-id", default=None,
              help="The upload to abort (default: the one in progress for the key).")
@client_command
def abort_upload(session: Session, target: Remote, upload_id: str | None) -> None:
    """Abort an upload in progress: its parts are discarded and the key is free again.

    \b
    Example:
      datacoffer uploads abort dc://reports-1250000000/backups/db.dump
    """
    client = session.client
    if upload_id is None:
        found = find_upload(client, target.coffer, target.key)
        if found is None:
            raise errors.BY_CODE["NoSuchUpload"](
                f"No upload is in progress for {target}.", resource=str(target))
        upload_id = found.upload_id
    client.abort_multipart_upload(target.coffer, target.key, upload_id)
    if session.json:
        session.emit({"Key": target.key, "UploadId": upload_id, "Aborted": True})
    session.say(f"aborted upload {upload_id} of {target}")
