"""One installation: its settings, keys, metadata store, region stores and domain services.

Both the server and the operator's admin commands open the same installation; the admin
commands work while the server runs, because everything shared lives in the metadata store.
"""

from __future__ import annotations

from dataclasses import dataclass

from datacoffer import rootkey
from datacoffer.config import Settings
from datacoffer.core.coffers import Coffers
from datacoffer.core.identities import Identities
from datacoffer.core.objects import Objects
from datacoffer.core.uploads import Uploads
from datacoffer.meta.db import Database, SchemaTooNew
from datacoffer.storage.blobs import RegionStore


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
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        db = Database(settings.database_url)
        try:
            found = db.migrate()
        except SchemaTooNew as exc:
            db.close()
            raise InstallationError(str(exc)) from None
        root_key = rootkey.load(settings.data_dir)
        if root_key is None and found == 0:
            root_key = rootkey.create(settings.data_dir)
        identities = Identities(db, root_key) if root_key else None
        coffers = Coffers(db, tuple(settings.regions), settings.max_coffers)
        fault = cls._fault(settings, identities, coffers)
        if fault:
            db.close()
            raise InstallationError(fault)
        assert identities is not None
        stores = {name: RegionStore(name, settings.region_path(name))
                  for name in settings.regions}
        for store in stores.values():
            store.prepare()
        objects = Objects(db, stores, lease_seconds=settings.lease_seconds,
                          max_object_size=settings.max_object_size,
                          body_timeout=settings.body_timeout)
        return cls(
            settings=settings,
            db=db,
            stores=stores,
            identities=identities,
            coffers=coffers,
            objects=objects,
            uploads=Uploads(db, stores, objects, max_part_size=settings.max_object_size,
                            min_part_size=settings.min_part_size),
            is_new=found == 0,
        )

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
