"""`datacoffer cat`, `stat` and `presign`: one object at a time."""

from __future__ import annotations

import sys

import click

from datacoffer.cli.coffers import when
from datacoffer.cli.remote import Remote, RemoteType
from datacoffer.cli.session import Session, client_command, usage


@click.command("cat")
@click.argument("source", type=RemoteType(need_key=True))
@click.option("--range", "byte_range", default=None, metavar="FIRST-LAST",
              help="Only these bytes (inclusive, from 0); FIRST- means to the end.")
@client_command
def cat(session: Session, source: Remote, byte_range: str | None) -> None:
    """Write an object's bytes to standard output.

    \b
    Examples:
      datacoffer cat dc://reports-1250000000/notes.txt
      datacoffer cat --range 0-1023 dc://reports-1250000000/db.dump | xxd | head
    """
    wanted = None
    if byte_range is not None:
        first, sep, last = byte_range.partition("-")
        if (not sep or not first.isdigit() or (last and not last.isdigit())
                or (last and int(last) < int(first))):
            usage(f"--range {byte_range!r}: expected FIRST-LAST or FIRST- (with FIRST <= LAST)")
        wanted = (int(first), int(last) if last else None)
    out = sys.stdout.buffer
    with session.client.get_object(source.coffer, source.key, byte_range=wanted) as reader:
        for chunk in reader.iter_bytes():
            out.write(chunk)
    out.flush()


@click.command("stat")
@click.argument("target", type=RemoteType())
@click.option("--regions", "regions", is_flag=True,
              help="Also show which of the coffer's regions hold a copy of the object yet "
                   "(a copy reaches the other regions shortly after the upload).")
@client_command
def stat(session: Session, target: Remote, regions: bool) -> None:
    """Show an object's size, checksums, type, time, expiration and encryption, or a
    coffer's settings.

    \b
    Examples:
      datacoffer stat dc://reports-1250000000/2026/q3.pdf
      datacoffer stat --regions dc://reports-1250000000/2026/q3.pdf
      datacoffer stat --json dc://reports-1250000000
    """
    if regions and not target.key:
        usage("--regions tells where an object's copies are: name an object, "
              "dc://COFFER/KEY")
    client = session.client
    if not target.key:
        page = client.get_coffer(target.coffer, max_keys=1)
        doc: dict[str, object] = {"Coffer": page.name, "Locations": page.locations,
                                  "EncryptType": page.encrypt_type}
        if page.encrypt_type == 2:
            doc.update(KeyId=page.key_id, KeyRegion=page.key_region)
    else:
        info = client.head_object(target.coffer, target.key, part_number=1)
        doc = {"Key": target.key, "Size": info.size, "ETag": info.etag,
               "SHA256": info.sha256, "Parts": info.parts_count or 1,
               "ContentType": info.content_type, "LastModified": info.last_modified,
               "EncryptType": info.encrypt_type, "Expiration": info.expiration}
        if regions:
            held = client.object_regions(target.coffer, target.key)
            doc["Regions"] = {name: "copy" if has else "pending" for name, has in held.items()}
    if session.json:
        session.emit(doc)
        return
    width = max(len(k) for k in doc)
    for name, value in doc.items():
        if value is None:
            value = "-"
        elif name in ("LastModified", "Expiration"):
            value = when(value) + " UTC"  # type: ignore[arg-type]
        elif isinstance(value, list):
            value = ", ".join(value)
        elif isinstance(value, dict):
            value = ", ".join(f"{region} ({state})" for region, state in value.items())
        session.say(f"{name:<{width}}  {value}")


@click.command("presign")
@click.argument("target", type=RemoteType(need_key=True))
@click.option("--method", type=click.Choice(["GET", "HEAD", "PUT"], case_sensitive=False),
              default="GET", show_default=True, help="The request the URL allows.")
@click.option("--expires", type=click.IntRange(1, 7 * 24 * 3600), default=3600,
              show_default=True, help="Seconds the URL stays valid.")
@client_command
def presign(session: Session, target: Remote, method: str, expires: int) -> None:
    """Print a URL that fetches (or stores) one object without credentials until it expires.

    \b
    Examples:
      datacoffer presign dc://reports-1250000000/q3.pdf --expires 600
      curl -o q3.pdf "$(datacoffer presign dc://reports-1250000000/q3.pdf)"
    """
    url = session.client.presign(method.upper(), target.coffer, target.key, expires=expires)
    if session.json:
        session.emit({"URL": url, "Method": method.upper(), "Expires": expires})
    session.say(url)
