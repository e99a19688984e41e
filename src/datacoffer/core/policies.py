"""Coffer policies in the metadata store: put, get, delete, and the parsed form for deciding.

A stored document is its canonical form; reading it back for a decision parses it once per
distinct text (`policy.stored`), so a request pays one small read and no parse.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

import sqlalchemy as sa

from datacoffer.core import policy
from datacoffer.core.clock import now_ms
from datacoffer.core.coffers import Coffer
from datacoffer.core.locks import Held, RecordLocks
from datacoffer.errors import CdcsError
from datacoffer.meta.db import Database
from datacoffer.meta.schema import coffer_policies, coffers

RECORD = "policy"
#: What GetCofferPolicy answers for a coffer without a policy (api.md, byte for byte).
EMPTY = '{"Statement": [], "version": "2.0"}'

_DOCUMENT = sa.select(coffer_policies.c.document).where(
    coffer_policies.c.coffer_id == sa.bindparam("coffer_id"))


class Policies:
    def __init__(self, db: Database, locks: RecordLocks, regions: Collection[str]) -> None:
        self.db = db
        self.locks = locks
        self.regions = regions

    def parse(self, coffer: Coffer, raw: bytes) -> policy.Policy:
        """The policy of a document for this coffer, or PolicyFormatCheckFailed naming the
        fault."""
        scope = policy.Scope(coffer=coffer.name, app_id=coffer.app_id, regions=self.regions)
        try:
            return policy.parse(raw, scope)
        except policy.PolicyError as exc:
            raise CdcsError("PolicyFormatCheckFailed", f"The policy is not valid: {exc}.",
                            resource=coffer.name) from None

    def text(self, coffer: Coffer) -> str:
        """The canonical document of the coffer's policy, or EMPTY."""
        with self.db.engine.connect() as conn:
            return conn.execute(_DOCUMENT, {"coffer_id": coffer.id}).scalar() or EMPTY

    def of(self, coffer: Coffer) -> policy.Policy | None:
        with self.db.engine.connect() as conn:
            text = conn.execute(_DOCUMENT, {"coffer_id": coffer.id}).scalar()
        return policy.stored(text) if text else None

    def of_many(self, coffer_ids: Iterable[int]) -> dict[int, policy.Policy]:
        """The policies of several coffers, in one query (GetService of a sub-account)."""
        with self.db.read() as conn:
            rows = conn.execute(sa.select(coffer_policies).where(
                coffer_policies.c.coffer_id.in_(list(coffer_ids))))
            return {r.coffer_id: policy.stored(r.document) for r in rows}

    def _write(self, held: Held, document: str | None) -> None:
        coffer = held.coffer
        with self.db.write() as conn:
            if conn.execute(sa.select(coffers.c.id).where(coffers.c.id == coffer.id)).first() \
                    is None:
                raise CdcsError("NoSuchCoffer", resource=coffer.name)
            self.locks.check(conn, held)
            conn.execute(coffer_policies.delete().where(
                coffer_policies.c.coffer_id == coffer.id))
            if document is not None:
                conn.execute(coffer_policies.insert().values(
                    coffer_id=coffer.id, document=document, updated_ms=now_ms()))

    def put(self, held: Held, parsed: policy.Policy) -> None:
        """Replace the coffer's policy (the caller holds its lock)."""
        self._write(held, parsed.text())

    def delete(self, held: Held) -> None:
        self._write(held, None)
