"""The scrubber: re-read every copy of every stored object and repair what is damaged.

Each copy (every region holding the object, every blob of it) is checked against the object's
recorded SHA-256 (core/integrity.py: decrypted first when encrypted), at `scrub_rate` bytes a
second. A damaged or missing copy is reported (core/copies.py: a finding and a queue entry)
and repaired at once from a good region by the replication machinery; what cannot be repaired
now stays queued and is retried with back-off.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

import sqlalchemy as sa

from datacoffer.core.clock import now_ms
from datacoffer.core.coffers import STORED, Coffers
from datacoffer.core.copies import close_findings, open_findings, report_damage
from datacoffer.core.integrity import BadCopy, check_file
from datacoffer.core.keyring import KeyOpener, Keyring
from datacoffer.core.leases import Leases
from datacoffer.core.objects import Objects, StoredObject
from datacoffer.core.replication import Copied, Replication
from datacoffer.core.throttle import Throttle
from datacoffer.errors import CdcsError
from datacoffer.meta.db import Database
from datacoffer.meta.schema import objects

log = logging.getLogger("datacoffer.scrub")

#: objects read from the metadata store at a time
BATCH = 100
#: how long the background pass's lease holds; renewed as the pass goes on
LEASE_MS = 10 * 60 * 1000

_NEXT = (sa.select(objects.c.id).where((objects.c.state == STORED)
                                       & (objects.c.id > sa.bindparam("after")))
         .order_by(objects.c.id).limit(BATCH))


@dataclass(frozen=True)
class Finding:
    coffer: str
    key: str
    region: str
    problem: str
    repaired: bool


@dataclass
class ScrubPass:
    objects: int = 0
    copies: int = 0
    bytes: int = 0
    findings: list[Finding] = field(default_factory=list)
    #: objects whose key the KMS would not give (their copies were not checked)
    skipped: int = 0
    #: False: another process was doing the installation's pass, this one did nothing
    ran: bool = True


class Scrubber:
    def __init__(self, db: Database, coffers_: Coffers, objects_: Objects, keyring: Keyring,
                 replication: Replication, leases: Leases, *, rate: int,
                 stop: threading.Event | None = None) -> None:
        """`stop`: once set, a pass ends where it is (Stopped)."""
        self.leases = leases
        self.db = db
        self.coffers = coffers_
        self.objects = objects_
        self.keyring = keyring
        self.replication = replication
        self.throttle = Throttle(rate, stop)
        #: (object id, region) of copies with open findings, read at the start of a pass
        self._open: set[tuple[int, str]] = set()

    def run(self, *, exclusive: bool = False) -> ScrubPass:
        """One pass over every stored object, in the order they were stored. `exclusive`
        (the background scrubbers): only if no other process of the installation is doing
        its pass, under the "scrub" lease."""
        if exclusive and not self.leases.take("scrub", LEASE_MS):
            return ScrubPass(ran=False)
        try:
            return self._pass(exclusive)
        finally:
            if exclusive:
                self.leases.release("scrub")

    def _pass(self, leased: bool) -> ScrubPass:
        result, after = ScrubPass(), 0
        self._open = open_findings(self.db)
        renewed = now_ms()
        while True:
            with self.db.read() as conn:
                ids = list(conn.execute(_NEXT, {"after": after}).scalars())
            if not ids:
                return result
            after = ids[-1]
            for object_id in ids:
                self._scrub(object_id, result)
                if leased and now_ms() - renewed > LEASE_MS // 3:
                    self.leases.take("scrub", LEASE_MS)
                    renewed = now_ms()

    def _scrub(self, object_id: int, result: ScrubPass) -> None:
        obj = self.objects.stored(object_id)
        coffer = None if obj is None else self.coffers.by_id(obj.coffer_id)
        if obj is None or coffer is None:
            return  # expired meanwhile
        try:
            damaged = self._check(obj, self.keyring.opener(coffer), result)
        except CdcsError as exc:  # the KMS refuses the coffer's key (disabled, unreachable)
            log.warning("cannot check %s/%s: %s", coffer.name, obj.key, exc.message)
            result.skipped += 1
            return
        result.objects += 1
        for region, problem in damaged.items():
            outcome = self.replication.run_entry(obj.id, region)
            # (None: not owed, or a replication worker took the entry first and repaired it)
            repaired = isinstance(outcome, Copied) or (
                outcome is None and (obj.id, region) not in open_findings(self.db, obj.id))
            result.findings.append(Finding(coffer.name, obj.key, region, problem, repaired))

    def _check(self, obj: StoredObject, open_key: KeyOpener | None,
               result: ScrubPass) -> dict[str, str]:
        """Check every copy of the object; report the damaged ones and return their regions
        and problems. A good copy closes the findings still open on it (restored by hand).
        A blob whose data key the KMS will not unwrap is damaged if another region's copy of
        it unwraps; if none does, the KMS refuses (KMSFailed: the object is skipped)."""
        damaged: dict[str, str] = {}
        refused: dict[str, CdcsError] = {}  # blob id -> the refusal, per region below
        unwrapped: set[str] = set()
        pending: list[tuple[str, str]] = []  # (region, blob id) refused so far
        for region in self.objects.regions_holding(obj):
            store = self.objects.stores[region]
            result.copies += 1
            for blob in self.objects.blobs(obj):
                try:
                    check_file(store.blob_path(blob.blob_id), blob.blob_id, blob.size,
                               blob.sha256, open_key, self.throttle)
                    unwrapped.add(blob.blob_id)
                except BadCopy as exc:
                    report_damage(self.db, obj.id, region, blob.blob_id, str(exc), "scrub")
                    damaged.setdefault(region, f"blob {blob.blob_id}: {exc}")
                    unwrapped.add(blob.blob_id)  # (its key unwrapped, or it has none)
                except CdcsError as exc:
                    if exc.code.name != "KMSFailed":
                        raise
                    refused.setdefault(blob.blob_id, exc)
                    pending.append((region, blob.blob_id))
                result.bytes += blob.size
            if (region not in damaged and not any(r == region for r, _ in pending)
                    and (obj.id, region) in self._open):
                with self.db.write() as conn:
                    close_findings(conn, [obj.id], now_ms(), region)
        for region, blob_id in pending:
            if blob_id not in unwrapped:  # no copy's key unwraps: the KMS refuses
                raise refused[blob_id]
            problem = "its wrapped data key does not unwrap, another region's does"
            report_damage(self.db, obj.id, region, blob_id, problem, "scrub")
            damaged.setdefault(region, f"blob {blob_id}: {problem}")
        return damaged
