"""One installation: its settings, keys, metadata store, region stores and domain services.

Both the server and the operator's admin commands open the same installation; the admin
commands work while the server runs, because everything shared lives in the metadata store.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import sqlalchemy as sa

from datacoffer import rootkey
from datacoffer.config import Settings
from datacoffer.core.coffers import Coffers
from datacoffer.core.expiry import Expiry
from datacoffer.core.identities import Identities
from datacoffer.core.keyring import Keyring
from datacoffer.core.leases import Leases
from datacoffer.core.lifecycles import Lifecycles
from datacoffer.core.locks import RecordLocks
from datacoffer.core.objects import Objects
from datacoffer.core.policies import Policies
from datacoffer.core.replication import Replication
from datacoffer.core.roles import Roles
from datacoffer.core.scrub import Scrubber
from datacoffer.core.tokens import Tokens
from datacoffer.core.uploads import Uploads
from datacoffer.kms import Kms
from datacoffer.kms.builtin import BuiltinKms
from datacoffer.kms.kmip import KmipKms, KmipSettings
from datacoffer.meta.db import Database, SchemaTooNew
from datacoffer.meta.schema import key_checks
from datacoffer.rootkey import SealingKey
from datacoffer.storage.blobs import RegionStore

#: sealed under the master key in `key_checks`, to recognise the right one at start
_MASTER_CHECK = b"datacoffer service master key"


class InstallationError(Exception):
    """The installation cannot be opened as it is; the text tells the operator what to do."""


@dataclass
class Installation:
    settings: Settings
    db: Database
    stores: dict[str, RegionStore]
    identities: Identities
    coffers: Coffers
    objects: Objects
    uploads: Uploads
    keyring: Keyring
    kms: Kms
    roles: Roles
    policies: Policies
    lifecycles: Lifecycles
    expiry: Expiry
    replication: Replication
    scrubber: Scrubber
    #: set when the server stops: background passes end where they are
    stopping: threading.Event
    tokens: Tokens
    #: whether this open created the installation (first start)
    is_new: bool

    @classmethod
    def open(cls, settings: Settings, *, create: bool = True) -> Installation:
        """Open the installation; with `create`, make a new one where there is none.

        The admin commands do not create: an operator who mistypes --data-dir must not
        silently get a fresh, empty installation.
        """
        if not create and not settings.metadata_url and not (
                settings.data_dir / "metadata.db").exists():
            raise InstallationError(
                f"there is no Data Coffer installation in {settings.data_dir}: check "
                f"--data-dir, or start `datacoffer serve --data-dir {settings.data_dir}` "
                "once to create one")
        try:  # a malformed key is refused before anything is created
            root_key = rootkey.load(settings.data_dir)
            master_found = rootkey.load(settings.data_dir, "master")
        except rootkey.KeyFileError as exc:
            raise InstallationError(str(exc)) from None
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        db = Database(settings.database_url)
        try:
            found = db.migrate()
        except SchemaTooNew as exc:
            db.close()
            raise InstallationError(str(exc)) from None
        if root_key is None and found == 0:
            root_key = rootkey.create(settings.data_dir)
        identities = Identities(db, root_key) if root_key else None
        coffers = Coffers(db, tuple(settings.regions), settings.max_coffers)
        fault = cls._fault(settings, identities, coffers)
        if fault:
            db.close()
            raise InstallationError(fault)
        assert identities is not None
        assert root_key is not None
        try:
            master = cls._master_key(settings, db, master_found, create=create)
        except InstallationError:
            db.close()
            raise
        kms = cls._kms(settings, db, root_key)
        roles = Roles(db)
        keyring = Keyring(master, kms, roles)
        stores = {name: RegionStore(name, settings.region_path(name))
                  for name in settings.regions}
        for store in stores.values():
            store.prepare()
        objects = Objects(db, stores, keyring, lease_seconds=settings.lease_seconds,
                          max_object_size=settings.max_object_size,
                          body_timeout=settings.body_timeout)
        # a policy write holds its lock while it reads a body of at most 20 KiB, which must
        # arrive within body_timeout
        locks = RecordLocks(db, objects.holder, objects.lapsed,
                            lease_seconds=settings.body_timeout + 10)
        policies = Policies(db, locks, tuple(settings.regions))
        stopping = threading.Event()
        replication = Replication(db, coffers, objects, keyring,
                                  workers=settings.replication_workers,
                                  retry_max_seconds=settings.replication_retry_max,
                                  rate=settings.replication_rate, stop=stopping)
        return cls(
            settings=settings,
            db=db,
            stores=stores,
            identities=identities,
            coffers=coffers,
            objects=objects,
            uploads=Uploads(db, stores, objects, max_part_size=settings.max_object_size,
                            min_part_size=settings.min_part_size),
            keyring=keyring,
            kms=kms,
            roles=roles,
            policies=policies,
            lifecycles=Lifecycles(locks),
            expiry=Expiry(db, objects),
            replication=replication,
            scrubber=Scrubber(db, coffers, objects, keyring, replication,
                              Leases(db, objects.holder, objects.lapsed),
                              rate=settings.scrub_rate, stop=stopping),
            stopping=stopping,
            tokens=Tokens(identities),
            is_new=found == 0,
        )

    @staticmethod
    def _kms(settings: Settings, db: Database, root_key: SealingKey) -> Kms:
        if settings.kms == "builtin":
            return BuiltinKms(db, root_key)
        config = settings.data_dir / "keys" / "kmip-client.conf"
        config.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        config.touch()  # empty: PyKMIP then reads no /etc/pykmip or ~/.pykmip file
        return KmipKms(db, KmipSettings(
            settings.kmip_host, settings.kmip_port, settings.kmip_cert, settings.kmip_key,
            settings.kmip_ca, settings.kmip_timeout), str(config))

    @staticmethod
    def _master_key(settings: Settings, db: Database, master: SealingKey | None, *,
                    create: bool) -> SealingKey | None:
        """The service master key (as loaded): checked against the value sealed with it, or
        made (with that value) the first time a server starts without one."""
        with db.read() as conn:
            check = conn.execute(sa.select(key_checks.c.sealed)
                                 .where(key_checks.c.name == "master")).scalar()
        if check is not None:
            try:
                if master is None or master.open(check, "check") != _MASTER_CHECK:
                    raise ValueError
            except ValueError:
                raise InstallationError(
                    f"the service master key of the installation in {settings.data_dir} is "
                    "missing or is not the one its EncryptType 1 data was written with: "
                    f"restore {rootkey.path_of(settings.data_dir, 'master')} from the backup "
                    f"(or set {rootkey.ENV_VARS['master']}); never let a new one be made"
                ) from None
            return master
        if master is None:
            if not create:
                return None
            master = rootkey.create(settings.data_dir, "master")
        try:
            with db.write() as conn:
                conn.execute(key_checks.insert(), {
                    "name": "master", "sealed": master.seal(_MASTER_CHECK, "check")})
        except sa.exc.IntegrityError:
            pass  # another process starting at the same time made the same key and check
        return master

    @staticmethod
    def _fault(settings: Settings, identities: Identities | None,
               coffers: Coffers) -> str | None:
        """Why an existing installation must not be served as configured, or None."""
        if identities is None or not identities.root_key_matches():
            return (f"the root key of the installation in {settings.data_dir} is missing or "
                    "is not the one its secrets were sealed with: restore keys/root.key from "
                    f"the backup (or set {rootkey.ENV_VAR}); never let a new one be made")
        missing = sorted(coffers.regions_in_use() - set(settings.regions))
        if missing:
            return (f"coffers are stored in region(s) {', '.join(missing)}, which the "
                    "configuration no longer names: restore them in the regions setting")
        return None

    def close(self) -> None:
        self.db.close()
