"""The metadata tables, as SQLAlchemy Core objects (portable: SQLite and PostgreSQL).

Times are integer milliseconds since the Unix epoch (UTC). Object keys compare in UTF-8 byte
order: SQLite's default BINARY collation does this; on PostgreSQL the column uses "C".
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

_key_type = sa.String(1024).with_variant(sa.String(1024, collation="C"), "postgresql")

schema_version = sa.Table(
    "schema_version", metadata,
    sa.Column("version", sa.Integer, nullable=False),
)

#: An account (root identity: parent_uin is NULL, app_id set) or a sub-account.
identities = sa.Table(
    "identities", metadata,
    sa.Column("uin", sa.String(32), primary_key=True),
    sa.Column("parent_uin", sa.String(32), sa.ForeignKey("identities.uin"), nullable=True),
    sa.Column("app_id", sa.String(32), nullable=True, unique=True),
    sa.Column("whitelisted", sa.Boolean, nullable=False, default=False),
    sa.Column("console_password", sa.String(256), nullable=True),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
)

#: API keys; the SecretKey is sealed under the installation's root key.
api_keys = sa.Table(
    "api_keys", metadata,
    sa.Column("secret_id", sa.String(64), primary_key=True),
    sa.Column("uin", sa.String(32), sa.ForeignKey("identities.uin"), nullable=False, index=True),
    sa.Column("sealed_key", sa.LargeBinary, nullable=False),
    sa.Column("enabled", sa.Boolean, nullable=False, default=True),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
)

coffers = sa.Table(
    "coffers", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(96), nullable=False, unique=True),
    sa.Column("owner_uin", sa.String(32), sa.ForeignKey("identities.uin"), nullable=False,
              index=True),
    sa.Column("app_id", sa.String(32), nullable=False),
    #: comma-separated region names, primary first
    sa.Column("locations", sa.String(256), nullable=False),
    sa.Column("encrypt_type", sa.Integer, nullable=False, default=0),
    sa.Column("key_id", sa.String(128), nullable=False, default=""),
    sa.Column("key_region", sa.String(64), nullable=False, default=""),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
)

#: One row per key: a reservation while a PutObject streams (state "writing") or while a
#: multipart upload is in progress (state "multipart"), then the object (state "stored").
objects = sa.Table(
    "objects", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("coffer_id", sa.Integer, sa.ForeignKey("coffers.id"), nullable=False),
    sa.Column("key", _key_type, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("writer_uin", sa.String(32), nullable=False),
    sa.Column("blob_id", sa.String(64), nullable=False),
    sa.Column("content_type", sa.String(256), nullable=False, default=""),
    sa.Column("size", sa.BigInteger, nullable=False, default=0),
    sa.Column("etag", sa.String(80), nullable=False, default=""),
    #: hex SHA-256; of a multipart object the composite "<sha256 of part digests>-<N>"
    sa.Column("sha256", sa.String(80), nullable=False, default=""),
    sa.Column("encrypt_type", sa.Integer, nullable=False, default=0),
    #: of a simple plain object: the CRC-32 of each MiB of its blob (core/checksums.py); empty
    #: when encrypted, NULL when written before version 7
    sa.Column("crcs", sa.LargeBinary, nullable=True),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
    #: the writing process ("host:pid:token") and when its reservation lapses
    sa.Column("holder", sa.String(256), nullable=False, default=""),
    sa.Column("lease_until_ms", sa.BigInteger, nullable=False, default=0),
    sa.UniqueConstraint("coffer_id", "key", name="uq_objects_coffer_key"),
)

#: Which regions hold a complete copy of an object's data.
object_copies = sa.Table(
    "object_copies", metadata,
    sa.Column("object_id", sa.Integer, sa.ForeignKey("objects.id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("region", sa.String(64), primary_key=True),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
)

#: The replication queue: a copy of an object still owed to a region of its coffer. Rows
#: are written in the transaction that stores the object and deleted in the one that records
#: the copy; `next_ms` is when the next attempt is due (back-off after a failure).
replication_queue = sa.Table(
    "replication_queue", metadata,
    sa.Column("object_id", sa.Integer, sa.ForeignKey("objects.id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("region", sa.String(64), primary_key=True),
    sa.Column("coffer_id", sa.Integer, nullable=False, index=True),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
    sa.Column("next_ms", sa.BigInteger, nullable=False, index=True),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("last_error", sa.String(256), nullable=False, default=""),
    #: the process copying it now ("host:pid:token") and when its claim lapses
    sa.Column("holder", sa.String(256), nullable=False, default="", server_default=""),
    sa.Column("lease_until_ms", sa.BigInteger, nullable=False, default=0, server_default="0"),
)

#: Damage found in a copy (by the scrubber, a read or replication) and when it was repaired.
#: Kept after the object is gone: it is the history the status command reports.
integrity_findings = sa.Table(
    "integrity_findings", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("found_ms", sa.BigInteger, nullable=False),
    sa.Column("object_id", sa.Integer, nullable=False, index=True),
    sa.Column("coffer", sa.String(96), nullable=False),
    sa.Column("key", _key_type, nullable=False),
    sa.Column("region", sa.String(64), nullable=False),
    sa.Column("blob_id", sa.String(64), nullable=False),
    sa.Column("problem", sa.String(256), nullable=False),
    #: "scrub", "read" or "replication"
    sa.Column("found_by", sa.String(16), nullable=False),
    sa.Column("repaired_ms", sa.BigInteger, nullable=True),
)

#: Multipart uploads. An active upload holds its key through an `objects` row in state
#: "multipart". A completed upload's row stays, so that its ID answers MultipartAlreadyCompleted.
uploads = sa.Table(
    "uploads", metadata,
    sa.Column("upload_id", sa.String(64), primary_key=True),
    sa.Column("coffer_id", sa.Integer, sa.ForeignKey("coffers.id"), nullable=False),
    sa.Column("key", _key_type, nullable=False),
    #: the `objects` row that holds the key (and becomes the object at completion)
    sa.Column("object_id", sa.Integer, nullable=False),
    sa.Column("initiator_uin", sa.String(32), nullable=False),
    sa.Column("content_type", sa.String(256), nullable=False),
    #: "active", "completing" (a complete holds it) or "completed"
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
    sa.Index("ix_uploads_listing", "coffer_id", "state", "key", "created_ms"),
)

#: Parts of uploads, one row per blob: "writing" while it streams (with a holder and a lease,
#: as an object's reservation), then "stored". At most one stored blob per part number: a
#: re-upload replaces the previous one in the transaction that stores it.
parts = sa.Table(
    "parts", metadata,
    sa.Column("blob_id", sa.String(64), primary_key=True),
    sa.Column("upload_id", sa.String(64), sa.ForeignKey("uploads.upload_id"), nullable=False),
    sa.Column("part_number", sa.Integer, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False, default=0),
    sa.Column("etag", sa.String(64), nullable=False, default=""),
    sa.Column("sha256", sa.String(64), nullable=False, default=""),
    #: of a plain part: the CRC-32 of each MiB (core/checksums.py); NULL as for objects
    sa.Column("crcs", sa.LargeBinary, nullable=True),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
    sa.Column("holder", sa.String(256), nullable=False, default=""),
    sa.Column("lease_until_ms", sa.BigInteger, nullable=False, default=0),
    sa.Index("ix_parts_upload", "upload_id", "part_number"),
    sa.Index("uq_parts_stored", "upload_id", "part_number", unique=True,
             sqlite_where=sa.text("state = 'stored'"),
             postgresql_where=sa.text("state = 'stored'")),
)


#: Keys of the built-in KMS: one account's, in one region; the key material is sealed under
#: the installation's root key (bound to the KeyId).
kms_keys = sa.Table(
    "kms_keys", metadata,
    sa.Column("key_id", sa.String(64), primary_key=True),
    sa.Column("app_id", sa.String(32), nullable=False, index=True),
    sa.Column("region", sa.String(64), nullable=False),
    sa.Column("enabled", sa.Boolean, nullable=False, default=True),
    sa.Column("sealed_material", sa.LargeBinary, nullable=False),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
)

#: Accounts that granted the coffer service the right to use their KMS keys.
service_roles = sa.Table(
    "service_roles", metadata,
    sa.Column("app_id", sa.String(32), primary_key=True),
    sa.Column("granted_ms", sa.BigInteger, nullable=False),
)

#: A value sealed under each installation key, so that a start with a wrong key is refused.
key_checks = sa.Table(
    "key_checks", metadata,
    sa.Column("name", sa.String(32), primary_key=True),
    sa.Column("sealed", sa.LargeBinary, nullable=False),
)


#: A background task that one process at a time does for the whole installation ("scrub"):
#: the process doing it and when its claim lapses.
worker_leases = sa.Table(
    "worker_leases", metadata,
    sa.Column("name", sa.String(32), primary_key=True),
    sa.Column("holder", sa.String(256), nullable=False),
    sa.Column("lease_until_ms", sa.BigInteger, nullable=False),
)

#: A coffer's policy, as its canonical JSON document.
coffer_policies = sa.Table(
    "coffer_policies", metadata,
    sa.Column("coffer_id", sa.Integer, sa.ForeignKey("coffers.id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("document", sa.Text, nullable=False),
    sa.Column("updated_ms", sa.BigInteger, nullable=False),
)

#: A write in progress on one of a coffer's records ("policy", later "lifecycle"): a second
#: writer meets the row and answers AlreadyLock. The lease frees it if its holder dies.
coffer_locks = sa.Table(
    "coffer_locks", metadata,
    sa.Column("coffer_id", sa.Integer, sa.ForeignKey("coffers.id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("record", sa.String(16), primary_key=True),
    sa.Column("holder", sa.String(256), nullable=False),
    sa.Column("lease_until_ms", sa.BigInteger, nullable=False),
)

#: Temporary credentials: the TmpSecretKey is sealed under the root key, the Token kept only
#: as its SHA-256; `policy` is the inline policy's canonical document, if any.
temp_credentials = sa.Table(
    "temp_credentials", metadata,
    sa.Column("tmp_secret_id", sa.String(64), primary_key=True),
    sa.Column("uin", sa.String(32), sa.ForeignKey("identities.uin"), nullable=False,
              index=True),
    sa.Column("sealed_key", sa.LargeBinary, nullable=False),
    sa.Column("token_sha256", sa.String(64), nullable=False),
    sa.Column("policy", sa.Text, nullable=True),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
    sa.Column("expires_ms", sa.BigInteger, nullable=False),
    sa.Column("revoked", sa.Boolean, nullable=False, default=False),
)

#: A coffer's lifecycle rule: its objects expire `days` after their upload completed.
coffer_lifecycles = sa.Table(
    "coffer_lifecycles", metadata,
    sa.Column("coffer_id", sa.Integer, sa.ForeignKey("coffers.id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("days", sa.Integer, nullable=False),
    sa.Column("updated_ms", sa.BigInteger, nullable=False),
)

#: The audit log (core/audit.py): one row per request that reached a coffer and per lifecycle
#: deletion, hash-chained: `hash` is the SHA-256 of the entry with the previous entry's hash.
audit_log = sa.Table(
    "audit_log", metadata,
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("time_ms", sa.BigInteger, nullable=False, index=True),
    sa.Column("request_id", sa.String(64), nullable=False),
    sa.Column("identity", sa.String(160), nullable=False),
    sa.Column("source", sa.String(64), nullable=False),
    sa.Column("operation", sa.String(48), nullable=False),
    sa.Column("resource", sa.Text, nullable=False),
    sa.Column("status", sa.Integer, nullable=False),
    sa.Column("code", sa.String(48), nullable=False),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)

#: the "previous hash" of the first audit entry, and the head of an empty chain
AUDIT_GENESIS = "0" * 64

#: The chain's head: the last entry's number and hash, in one row that every append locks
#: (so that appends from several processes chain one after another).
audit_head = sa.Table(
    "audit_head", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)
