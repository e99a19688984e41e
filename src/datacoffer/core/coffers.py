"""Coffers: creation, description, listing of their objects, deletion."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa

from datacoffer.core.clock import now_ms
from datacoffer.core.identities import Identity
from datacoffer.core.lifecycle import DAY_MS
from datacoffer.errors import CdcsError
from datacoffer.meta.db import Database
from datacoffer.meta.schema import (
    coffer_lifecycles,
    coffer_policies,
    coffers,
    objects,
    replication_queue,
)
from datacoffer.names import split_coffer_name

STORED = "stored"
WRITING = "writing"
MULTIPART = "multipart"
#: expired by the lifecycle rule, its files being removed (core/expiry.py)
EXPIRING = "expiring"


@dataclass(frozen=True)
class Coffer:
    id: int
    name: str
    owner_uin: str
    app_id: str
    locations: tuple[str, ...]
    encrypt_type: int
    key_id: str
    key_region: str
    created_ms: int
    #: the canonical document of the coffer's policy, read with the coffer (None: no policy)
    policy: str | None = None
    #: the lifecycle rule's Days, read with the coffer (None: no rule)
    lifecycle_days: int | None = None

    @property
    def primary(self) -> str:
        return self.locations[0]


@dataclass(frozen=True)
class CofferSpec:
    """What PutCoffer asks for."""

    locations: tuple[str, ...]
    encrypt_type: int = 0
    key_id: str = ""
    key_region: str = ""


@dataclass(frozen=True)
class ListedObject:
    key: str
    size: int
    etag: str
    created_ms: int


@dataclass(frozen=True)
class Listing:
    contents: list[ListedObject]
    common_prefixes: list[str]
    is_truncated: bool
    next_marker: str


def _row_to_coffer(row: sa.Row) -> Coffer:
    return Coffer(id=row.id, name=row.name, owner_uin=row.owner_uin, app_id=row.app_id,
                  locations=tuple(row.locations.split(",")), encrypt_type=row.encrypt_type,
                  key_id=row.key_id, key_region=row.key_region, created_ms=row.created_ms,
                  policy=row.policy, lifecycle_days=row.lifecycle_days)


def successor(prefix: str) -> str | None:
    """The least string greater than every string that starts with `prefix` (code-point order,
    which is UTF-8 byte order), or None when there is none."""
    chars = list(prefix)
    while chars:
        code = ord(chars[-1]) + 1
        if code == 0xD800:
            code = 0xE000
        if code <= 0x10FFFF:
            chars[-1] = chr(code)
            return "".join(chars)
        chars.pop()
    return None


#: A coffer with its policy and lifecycle rule: deciding a request by another identity, or
#: telling an object's expiration, needs no second read.
_WITH_POLICY = sa.select(
    coffers, coffer_policies.c.document.label("policy"),
    coffer_lifecycles.c.days.label("lifecycle_days")).select_from(
    coffers.outerjoin(coffer_policies, coffer_policies.c.coffer_id == coffers.c.id)
    .outerjoin(coffer_lifecycles, coffer_lifecycles.c.coffer_id == coffers.c.id))
#: Built once: composing a statement costs more than running it.
_BY_NAME = _WITH_POLICY.where(coffers.c.name == sa.bindparam("name"))
_BY_ID = _WITH_POLICY.where(coffers.c.id == sa.bindparam("id"))


class Coffers:
    def __init__(self, db: Database, regions: tuple[str, ...], max_coffers: int) -> None:
        self.db = db
        self.regions = regions
        self.max_coffers = max_coffers

    def get(self, name: str) -> Coffer | None:
        return self._one(_BY_NAME, {"name": name})

    def by_id(self, coffer_id: int) -> Coffer | None:
        return self._one(_BY_ID, {"id": coffer_id})

    def _one(self, statement: sa.Select, params: dict[str, object]) -> Coffer | None:
        with self.db.engine.connect() as conn:
            row = conn.execute(statement, params).first()
        return _row_to_coffer(row) if row else None

    def owned_by(self, account_uin: str) -> list[Coffer]:
        with self.db.read() as conn:
            rows = conn.execute(_WITH_POLICY.where(coffers.c.owner_uin == account_uin)
                                .order_by(coffers.c.name))
            return [_row_to_coffer(r) for r in rows]

    def regions_in_use(self) -> set[str]:
        with self.db.read() as conn:
            rows = conn.execute(sa.select(coffers.c.locations).distinct()).scalars()
            return {region for locations in rows for region in locations.split(",")}

    def check_spec(self, name: str, spec: CofferSpec) -> None:
        """InvalidArgument unless the regions and encryption of a PutCoffer are acceptable."""
        locs = spec.locations
        if not 1 <= len(locs) <= 3 or len(set(locs)) != len(locs):
            raise CdcsError("InvalidArgument",
                            "Locations.Location must list 1 to 3 distinct regions.",
                            resource=name)
        unknown = [r for r in locs if r not in self.regions]
        if unknown:
            raise CdcsError("InvalidArgument",
                            f"Unknown region {unknown[0]!r}; this server has: "
                            f"{', '.join(self.regions)}.", resource=name)
        if spec.encrypt_type not in (0, 1, 2):
            raise CdcsError("InvalidArgument", "EncryptType must be 0, 1 or 2.", resource=name)
        if spec.encrypt_type != 2 and (spec.key_id or spec.key_region):
            raise CdcsError("InvalidArgument",
                            "KeyId and KeyRegion are only allowed with EncryptType 2.",
                            resource=name)
        if spec.encrypt_type == 2 and not (spec.key_id and spec.key_region):
            raise CdcsError("InvalidArgument", "EncryptType 2 needs KeyId and KeyRegion.",
                            resource=name)

    def create(self, owner: Identity, name: str, spec: CofferSpec,
               check_key: Callable[[], None] | None = None) -> Coffer:
        """Create a coffer owned by `owner`'s account; `owner` must be a root identity.

        `check_key` (the customer key's checks, for EncryptType 2) runs last, in the
        transaction, so that its refusal comes after the name's and the count's."""
        _, app_id = split_coffer_name(name)
        with self.db.write() as conn:
            row = conn.execute(sa.select(coffers).where(coffers.c.name == name)).first()
            if row is not None:
                code = ("CofferAlreadyOwnedByYou" if row.owner_uin == owner.account_uin
                        else "CofferAlreadyExists")
                raise CdcsError(code, resource=name)
            if app_id != owner.app_id:
                raise CdcsError("InvalidCofferName",
                                f"The name must end with your AppID: <name>-{owner.app_id}.",
                                resource=name)
            owned = conn.execute(sa.select(sa.func.count()).where(
                coffers.c.owner_uin == owner.account_uin)).scalar_one()
            if owned >= self.max_coffers:
                raise CdcsError("CofferCountExceedsLimit",
                                f"An account may own at most {self.max_coffers} coffers.",
                                resource=name)
            if check_key is not None:
                check_key()
            created = now_ms()
            result = conn.execute(coffers.insert().values(
                name=name, owner_uin=owner.account_uin, app_id=app_id,
                locations=",".join(spec.locations), encrypt_type=spec.encrypt_type,
                key_id=spec.key_id, key_region=spec.key_region, created_ms=created))
            (coffer_id,) = result.inserted_primary_key
        return Coffer(coffer_id, name, owner.account_uin, app_id, spec.locations,
                      spec.encrypt_type, spec.key_id, spec.key_region, created)

    def delete(self, coffer: Coffer) -> None:
        """Delete an empty coffer (no object, no upload in progress)."""
        with self.db.write() as conn:
            conn.execute(sa.select(coffers.c.id).where(coffers.c.id == coffer.id)
                         .with_for_update())
            if conn.execute(sa.select(replication_queue.c.object_id).where(
                    replication_queue.c.coffer_id == coffer.id).limit(1)).first():
                raise CdcsError("DataSynchronization",
                                "Objects of this coffer are still being copied to its other "
                                "regions; retry later.", resource=coffer.name)
            states = {r.state for r in conn.execute(
                sa.select(objects.c.state).where(objects.c.coffer_id == coffer.id).distinct())}
            if STORED in states:
                raise CdcsError("CofferNotEmpty",
                                "The coffer holds objects; objects leave a coffer only through "
                                "its lifecycle rule.", resource=coffer.name)
            if MULTIPART in states:
                raise CdcsError("CofferNotEmpty",
                                "The coffer has multipart uploads in progress: complete or "
                                "abort them first.", resource=coffer.name)
            if WRITING in states:
                raise CdcsError("AlreadyLock",
                                "An upload into this coffer is in progress; retry later.",
                                resource=coffer.name)
            if EXPIRING in states:
                raise CdcsError("AlreadyLock", "Objects of this coffer are being expired by "
                                "its lifecycle rule; retry in a moment.", resource=coffer.name)
            conn.execute(coffers.delete().where(coffers.c.id == coffer.id))

    def list_objects(self, coffer: Coffer, prefix: str, delimiter: str, marker: str,
                     max_keys: int) -> Listing:
        """Keys in UTF-8 byte order after `marker`, rolled up at `delimiter` as S3 does."""
        entries: list[ListedObject | str] = []
        upper = successor(prefix) if prefix else None
        lower, inclusive = marker, False
        live = objects.c.state == STORED
        if coffer.lifecycle_days is not None:  # (due objects are gone, swept or not)
            live &= objects.c.created_ms > now_ms() - coffer.lifecycle_days * DAY_MS
        with self.db.read() as conn:
            while len(entries) <= max_keys:
                q = sa.select(objects.c.key, objects.c.size, objects.c.etag,
                              objects.c.created_ms).where(
                    (objects.c.coffer_id == coffer.id) & live
                    & (objects.c.key >= prefix)
                    & (objects.c.key >= lower if inclusive else objects.c.key > lower))
                if upper is not None:
                    q = q.where(objects.c.key < upper)
                limit = max_keys + 1 - len(entries)
                rows = conn.execute(q.order_by(objects.c.key).limit(limit)).all()
                reseek = False
                for row in rows:
                    rest = row.key[len(prefix):]
                    cut = rest.find(delimiter) if delimiter else -1
                    if cut < 0:
                        entries.append(ListedObject(row.key, row.size, row.etag,
                                                    row.created_ms))
                        lower, inclusive = row.key, False
                        continue
                    common = prefix + rest[:cut + len(delimiter)]
                    if common > marker:  # else it was listed on the page that ended there
                        entries.append(common)
                    following = successor(common)
                    if following is None:  # nothing can follow: the listing is complete
                        rows = []
                        break
                    lower, inclusive, reseek = following, True, True
                    break
                if not reseek and len(rows) < limit:
                    break
        truncated = len(entries) > max_keys
        entries = entries[:max_keys]
        last = entries[-1] if entries else ""
        return Listing(
            contents=[e for e in entries if isinstance(e, ListedObject)],
            common_prefixes=[e for e in entries if isinstance(e, str)],
            is_truncated=truncated,
            next_marker=(last if isinstance(last, str) else last.key) if truncated else "")
