"""Coffer policies in the metadata store: check a document, put it, delete it.

A stored document is its canonical form. It is read with its coffer (`Coffers.get` joins
it), and parsed once per distinct text (`policy.stored`), so a decision costs no extra read
and no parse.
"""

from __future__ import annotations

from collections.abc import Collection

from datacoffer.core import policy
from datacoffer.core.clock import now_ms
from datacoffer.core.coffers import Coffer
from datacoffer.core.locks import Held, RecordLocks
from datacoffer.errors import CdcsError
from datacoffer.meta.db import Database
from datacoffer.meta.schema import coffer_policies

RECORD = "policy"


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

    def _write(self, held: Held, document: str | None) -> None:
        with self.locks.writing(held) as conn:
            conn.execute(coffer_policies.delete().where(
                coffer_policies.c.coffer_id == held.coffer.id))
            if document is not None:
                conn.execute(coffer_policies.insert().values(
                    coffer_id=held.coffer.id, document=document, updated_ms=now_ms()))

    def put(self, held: Held, parsed: policy.Policy) -> None:
        """Replace the coffer's policy (the caller holds its lock). A policy without
        statements grants nothing: it is stored as no policy, so that GetCofferPolicy shows
        the one empty document."""
        self._write(held, parsed.text() if parsed.statements else None)

    def delete(self, held: Held) -> None:
        self._write(held, None)
