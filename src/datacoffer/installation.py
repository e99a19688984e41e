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
from datacoffer.meta.db import Database
from datacoffer.storage.blobs import RegionStore


@dataclass
class Installation:
    settings: Settings
    db: Database
    stores: dict[str, RegionStore]
    identities: Identities
    coffers: Coffers
    objects: Objects
    #: whether this open created the installation (first start)
    is_new: bool

    @classmethod
    def open(cls, settings: Settings) -> Installation:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        root_key, _ = rootkey.load_or_create(settings.data_dir)
        db = Database(settings.database_url)
        found = db.migrate()
        stores = {name: RegionStore(name, settings.region_path(name))
                  for name in settings.regions}
        for store in stores.values():
            store.prepare()
        return cls(
            settings=settings,
            db=db,
            stores=stores,
            identities=Identities(db, root_key),
            coffers=Coffers(db, tuple(settings.regions), settings.max_coffers),
            objects=Objects(db, stores, lease_seconds=settings.lease_seconds,
                            max_object_size=settings.max_object_size),
            is_new=found == 0,
        )

    def close(self) -> None:
        self.db.close()
