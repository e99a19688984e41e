"""`datacoffer mb`, `rb` and `ls`: coffers and their listings."""

from __future__ import annotations

from datetime import datetime

import click

from datacoffer.cli.remote import Remote, RemoteType
from datacoffer.cli.session import Session, client_command, usage


def when(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S")


@click.command("mb")
@click.argument("coffer", type=RemoteType())
@click.option("--location", "locations", multiple=True, metavar="REGION",
              help="A region to store the coffer in; repeat for up to 3 (the first is the "
                   "primary). Default: the profile's region.")
@click.option("--encrypt-type", type=click.IntRange(0, 2), default=0, show_default=True,
              help="0 none, 1 the service master key, 2 a KMS customer key (--key-id).")
@click.option("--key-id", default=None, help="The KMS key of --encrypt-type 2.")
@click.option("--key-region", default=None, help="The KMS key's region (--encrypt-type 2).")
@client_command
def make_coffer(session: Session, coffer: Remote, locations: tuple[str, ...],
                encrypt_type: int, key_id: str | None, key_region: str | None) -> None:
    """Make a coffer. Its name ends with your AppID: NAME-APPID.

    \b
    Examples:
      datacoffer mb dc://reports-1250000000 --location ap-tianjin --location ap-shanghai
      datacoffer mb dc://vault-1250000000 --location ap-tianjin --encrypt-type 1
    """
    coffer.only_coffer("mb")
    regions = list(locations) or ([session.client.profile.region]
                                  if session.client.profile.region else [])
    if not regions:
        usage("give at least one --location REGION (or set a region in the profile)")
    session.client.create_coffer(coffer.coffer, regions, encrypt_type=encrypt_type,
                                 key_id=key_id, key_region=key_region)
    if session.json:
        session.emit({"Coffer": coffer.coffer, "Locations": regions,
                      "EncryptType": encrypt_type})
    session.say(f"made {coffer} in {', '.join(regions)}")


@click.command("rb")
@click.argument("coffer", type=RemoteType())
@client_command
def remove_coffer(session: Session, coffer: Remote) -> None:
    """Remove an empty coffer (objects leave a coffer only through its lifecycle rule).

    \b
    Example:
      datacoffer rb dc://scratch-1250000000
    """
    coffer.only_coffer("rb")
    session.client.delete_coffer(coffer.coffer)
    if session.json:
        session.emit({"Coffer": coffer.coffer, "Removed": True})
    session.say(f"removed {coffer}")


@click.command("ls")
@click.argument("where", type=RemoteType(), required=False)
@click.option("-r", "--recursive", is_flag=True, help="List every key under the prefix, not "
              "one level of 'directories'.")
@click.option("-l", "--long", "long_", is_flag=True,
              help="Also show times, sizes and ETags (for coffers: creation time, regions and "
                   "encryption).")
@client_command
def list_command(session: Session, where: Remote | None, recursive: bool, long_: bool) -> None:
    """List your coffers, or the objects of a coffer under a prefix.

    Without --recursive, keys are shown one '/'-level at a time: deeper keys appear as their
    common prefix ("PRE photos/").

    \b
    Examples:
      datacoffer ls
      datacoffer ls -l dc://reports-1250000000/2026/
      datacoffer ls -r --json dc://reports-1250000000
    """
    client = session.client
    if where is None:
        listing = client.list_coffers()
        rows = []
        for c in listing.coffers:
            row: dict[str, object] = {"Name": c.name, "Locations": c.locations,
                                      "CreationDate": c.created}
            if long_:  # GetService does not say how a coffer is encrypted: GetCoffer does
                page = client.get_coffer(c.name, max_keys=1)
                row["EncryptType"] = page.encrypt_type
                if page.encrypt_type == 2:
                    row.update(KeyId=page.key_id, KeyRegion=page.key_region)
            rows.append(row)
            session.say(f"{when(c.created)}  {c.name}  {','.join(c.locations)}  "
                        f"encrypt-type {row['EncryptType']}" if long_ else c.name)
        if session.json:
            session.emit(rows)
        return
    pages = client.iter_coffer(where.coffer, prefix=where.key,
                               delimiter="" if recursive else "/")
    documents: list[dict[str, object]] = []
    for page in pages:
        for prefix in page.common_prefixes:
            if session.json:
                documents.append({"Prefix": prefix})
            session.say(f"{'PRE':>30}  {prefix}" if long_ else prefix)
        for obj in page.objects:
            if session.json:
                documents.append({"Key": obj.key, "Size": obj.size, "ETag": obj.etag,
                                  "LastModified": obj.last_modified})
            session.say(f"{when(obj.last_modified)}  {obj.size:>10}  {obj.key}  {obj.etag}"
                        if long_ else obj.key)
    if session.json:
        session.emit(documents)
