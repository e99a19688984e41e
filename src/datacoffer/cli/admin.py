"""`datacoffer admin …`: the operator's commands on accounts, keys, the whitelist, status."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from typing import Any

import click
import sqlalchemy as sa

from datacoffer import __version__
from datacoffer.cli import admin_audit
from datacoffer.cli.admin_keys import kms, role
from datacoffer.cli.admin_run import run
from datacoffer.cli.admin_tokens import token
from datacoffer.cli.options import data_dir_option, emit, fail, installation
from datacoffer.core import audit, copies
from datacoffer.core.clock import iso8601, now_ms
from datacoffer.core.coffers import MULTIPART, STORED, WRITING
from datacoffer.core.identities import ApiKey
from datacoffer.installation import Installation
from datacoffer.meta.db import LATEST
from datacoffer.meta.schema import (
    coffers,
    object_copies,
    objects,
    replication_queue,
)


def _read_password(wanted: bool) -> str | None:
    if not wanted:
        return None
    password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        fail("--password-stdin: no password on standard input", 2)
    return password


def _key_document(key: ApiKey) -> dict[str, str]:
    doc = {"Uin": key.identity.uin, "SecretId": key.secret_id, "SecretKey": key.secret_key}
    if key.identity.is_root:
        doc = {"AppId": key.identity.app_id, **doc}
    return doc


@click.group()
def admin() -> None:
    """Operator commands. Each takes --data-dir and works while the server runs."""


admin.add_command(kms)
admin.add_command(role)
admin.add_command(token)
admin.add_command(run)
admin.add_command(admin_audit.audit)


@admin.group()
def account() -> None:
    """Accounts (root identities)."""


@account.command("create")
@click.option("--app-id", required=True, help="The account's AppID (digits).")
@click.option("--uin", required=True, help="The account's OwnerUin (digits).")
@click.option("--not-whitelisted", is_flag=True, help="Do not open the service for it yet.")
@click.option("--password-stdin", is_flag=True,
              help="Read a console password from the first line of standard input.")
@data_dir_option
def account_create(app_id: str, uin: str, not_whitelisted: bool, password_stdin: bool,
                   data_dir: str | None, config_file: str | None) -> None:
    """Create an account with a first API key; print {AppId, Uin, SecretId, SecretKey}.

    \b
    Example:
      datacoffer admin account create --app-id 1250000000 --uin 100000000001
    """
    password = _read_password(password_stdin)
    with installation(data_dir, config_file) as inst:
        key = inst.identities.create_account(app_id, uin, whitelisted=not not_whitelisted,
                                             password=password)
    emit(_key_document(key))


@admin.group()
def subaccount() -> None:
    """Sub-accounts: identities under an account, with rights only from coffer policies."""


@subaccount.command("create")
@click.option("--parent-uin", required=True, help="The UIN of the owning account.")
@click.option("--uin", required=True, help="The sub-account's UIN (digits).")
@click.option("--password-stdin", is_flag=True,
              help="Read a console password from the first line of standard input.")
@data_dir_option
def subaccount_create(parent_uin: str, uin: str, password_stdin: bool, data_dir: str | None,
                      config_file: str | None) -> None:
    """Create a sub-account with a first API key; print {Uin, SecretId, SecretKey}.

    \b
    Example:
      datacoffer admin subaccount create --parent-uin 100000000001 --uin 100000000011
    """
    password = _read_password(password_stdin)
    with installation(data_dir, config_file) as inst:
        key = inst.identities.create_subaccount(parent_uin, uin, password=password)
    emit(_key_document(key))


@admin.group()
def key() -> None:
    """API keys (SecretId/SecretKey) of accounts and sub-accounts."""


@key.command("create")
@click.option("--uin", required=True, help="The account or sub-account.")
@data_dir_option
def key_create(uin: str, data_dir: str | None, config_file: str | None) -> None:
    """Create another key; print {SecretId, SecretKey}. The SecretKey is shown only now."""
    with installation(data_dir, config_file) as inst:
        new = inst.identities.create_key(uin)
    emit({"SecretId": new.secret_id, "SecretKey": new.secret_key})


def _key_state_command(name: str, help_text: str,
                       action: Callable[[Installation, str], None]) -> None:
    @key.command(name, help=help_text)
    @click.option("--secret-id", required=True, help="The key's SecretId.")
    @data_dir_option
    def command(secret_id: str, data_dir: str | None, config_file: str | None) -> None:
        with installation(data_dir, config_file) as inst:
            action(inst, secret_id)
        emit({"SecretId": secret_id, "Result": name})


_key_state_command("disable", "Disable a key: requests signed with it get AuthFailed.",
                   lambda inst, sid: inst.identities.set_key_enabled(sid, False))
_key_state_command("enable", "Enable a disabled key again.",
                   lambda inst, sid: inst.identities.set_key_enabled(sid, True))
_key_state_command("delete", "Delete a key for good.",
                   lambda inst, sid: inst.identities.delete_key(sid))


@key.command("list")
@click.option("--uin", required=True, help="The account or sub-account.")
@data_dir_option
def key_list(uin: str, data_dir: str | None, config_file: str | None) -> None:
    """List an identity's keys (SecretIds and state; never the SecretKeys)."""
    with installation(data_dir, config_file) as inst:
        emit(inst.identities.list_keys(uin))


@admin.group()
def whitelist() -> None:
    """The whitelist: accounts for which the service is open."""


def _whitelist_command(name: str, whitelisted: bool, help_text: str) -> None:
    @whitelist.command(name, help=help_text)
    @click.option("--app-id", required=True, help="The account's AppID.")
    @data_dir_option
    def command(app_id: str, data_dir: str | None, config_file: str | None) -> None:
        with installation(data_dir, config_file) as inst:
            inst.identities.set_whitelisted(app_id, whitelisted)
        emit({"AppId": app_id, "Whitelisted": whitelisted})


_whitelist_command("add", True, "Open the service for an account (and its sub-accounts).")
_whitelist_command("remove", False,
                   "Close the service for an account: its requests get ServiceNotOpen.")


@whitelist.command("list")
@data_dir_option
def whitelist_list(data_dir: str | None, config_file: str | None) -> None:
    """List the whitelisted accounts."""
    with installation(data_dir, config_file) as inst:
        emit(inst.identities.whitelist())


def _count_by(conn: sa.Connection, column: sa.Column[str]) -> dict[str, int]:
    """Rows of the column's table, counted by the column's value."""
    return {value: n for value, n in conn.execute(
        sa.select(column, sa.func.count()).group_by(column))}


def _status(inst: Installation) -> dict[str, Any]:
    with inst.db.read() as conn:
        count = sa.func.count()
        n_coffers = conn.execute(sa.select(count).select_from(coffers)).scalar_one()
        by_state = _count_by(conn, objects.c.state)
        stored_bytes = conn.execute(sa.select(sa.func.coalesce(sa.func.sum(objects.c.size), 0))
                                    .where(objects.c.state == STORED)).scalar_one()
        per_region = _count_by(conn, object_copies.c.region)
        owed = _count_by(conn, replication_queue.c.region)
    regions = []
    for name, store in inst.stores.items():
        usage = shutil.disk_usage(store.root)
        regions.append({"Name": name, "Path": str(store.root.resolve()),
                        "Objects": per_region.get(name, 0), "Owed": owed.get(name, 0),
                        "FreeBytes": usage.free})
    lag = inst.replication.lag()
    found, unrepaired, latest = copies.findings(inst.db)
    entries, head_hash = audit.head(inst.db)
    now = now_ms()
    return {
        "Version": __version__,
        "DataDir": str(inst.settings.data_dir.resolve()),
        "Metadata": inst.db.engine.dialect.name,
        "SchemaVersion": LATEST,
        "Regions": regions,
        "Counts": {**inst.identities.counts(), "coffers": n_coffers,
                   "objects": by_state.get(STORED, 0),
                   "bytes": int(stored_bytes),  # PostgreSQL sums a BIGINT as NUMERIC
                   "uploads_in_progress": by_state.get(WRITING, 0),
                   "multipart_uploads": by_state.get(MULTIPART, 0)},
        "Replication": {"Pending": lag.pending, "Failing": lag.failing,
                        "LagSeconds": round(lag.seconds(now), 3),
                        "Oldest": iso8601(lag.oldest_ms) if lag.oldest_ms else None},
        "Audit": {"Entries": entries, "HeadHash": head_hash},
        "Integrity": {"Findings": found, "Unrepaired": unrepaired,
                      "Latest": [{"Found": iso8601(f.found_ms), "FoundBy": f.found_by,
                                  "Coffer": f.coffer, "Key": f.key, "Region": f.region,
                                  "Problem": f.problem,
                                  "Repaired": iso8601(f.repaired_ms) if f.repaired_ms
                                  else None} for f in latest]},
    }


@admin.command("status")
@data_dir_option
def status(data_dir: str | None, config_file: str | None) -> None:
    """Regions, their free space and object counts, the installation's totals, the
    replication queue (copies still owed to regions, the age of the oldest) and damaged
    copies found by reads, replication and the scrubber (the latest ten)."""
    with installation(data_dir, config_file) as inst:
        emit(_status(inst))
