"""Settings: flag, then environment (`DATACOFFER_*`), then TOML file, then default.

The TOML file mirrors the setting names (`port = 8080`, `[regions]` table of name = path).
Everything the server and the admin commands need to find their data comes from here.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from datacoffer.core.conditions import ConditionError, parse_network

DEFAULT_REGIONS = ("ap-tianjin", "ap-shanghai", "ap-guangzhou")
ENV_PREFIX = "DATACOFFER_"


class ConfigError(ValueError):
    """A setting is missing or has the wrong form; the text names it."""


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path("datacoffer-data")
    host: str = "127.0.0.1"
    port: int = 8080
    #: SQLAlchemy URL of the metadata store; empty means SQLite in the data directory.
    metadata_url: str = ""
    #: region name -> storage directory; relative paths are under the data directory.
    regions: dict[str, str] = field(default_factory=lambda: {r: f"regions/{r}"
                                                             for r in DEFAULT_REGIONS})
    max_coffers: int = 20
    #: allowed clock skew for q-sign-time, seconds, on each side.
    sign_skew: int = 300
    #: largest PutObject body, bytes.
    max_object_size: int = 5 * 1024**3
    #: a PutObject reservation is renewed this often, seconds; it lapses after three misses.
    lease_seconds: int = 10
    #: an upload whose client sends nothing for this long is abandoned, seconds.
    body_timeout: int = 60
    #: every part of a multipart upload but the last must be at least this large, bytes.
    min_part_size: int = 1024 * 1024
    tls_cert: str = ""
    tls_key: str = ""
    log_level: str = "info"
    #: the KMS of EncryptType 2 coffers: "builtin" (keys in the metadata store) or "kmip"
    kms: str = "builtin"
    #: the KMIP key manager (with kms = "kmip"): address, client certificate and key, CA (PEM)
    kmip_host: str = ""
    kmip_port: int = 5696
    kmip_cert: str = ""
    kmip_key: str = ""
    kmip_ca: str = ""
    #: seconds before a KMIP request that gets no answer fails (KMSFailed)
    kmip_timeout: int = 10
    #: addresses or CIDR blocks of reverse proxies whose X-Forwarded-For is believed (the
    #: first hop becomes the client address of policy conditions); none by default
    trusted_proxies: tuple[str, ...] = ()
    #: seconds between two passes of the lifecycle sweeper (`serve` without --no-background)
    lifecycle_interval: int = 600
    #: seconds between two looks at the replication queue when it has nothing due
    replication_interval: int = 1
    #: objects copied to other regions at once
    replication_workers: int = 2
    #: longest wait before a failed copy is tried again, seconds (the back-off doubles up
    #: to this from 1 s)
    replication_retry_max: int = 300
    #: bytes a second that replication reads, all workers together; 0 is no limit
    replication_rate: int = 0
    #: bytes a second that the scrubber reads (also `admin run scrub`); 0 is no limit
    scrub_rate: int = 16 * 1024 * 1024
    #: seconds from the end of one background scrub pass to the start of the next
    scrub_interval: int = 86400
    #: addresses or CIDR blocks that may read /metrics without a signature
    metrics_allow: tuple[str, ...] = ("127.0.0.0/8", "::1")
    #: UINs whose signed requests may read /metrics from anywhere
    metrics_uins: tuple[str, ...] = ()

    def region_path(self, region: str) -> Path:
        path = Path(self.regions[region])
        return path if path.is_absolute() else self.data_dir / path

    @property
    def database_url(self) -> str:
        return self.metadata_url or f"sqlite:///{(self.data_dir / 'metadata.db').resolve()}"


_INT_FIELDS = {f.name for f in fields(Settings) if f.type == "int"}


def _coerce(name: str, value: Any) -> Any:
    if name == "data_dir":
        return Path(value)
    if name == "regions":
        if isinstance(value, str):  # DATACOFFER_REGIONS="ap-a=/mnt/a,ap-b=/mnt/b"
            pairs = [item.split("=", 1) for item in value.split(",") if item]
            if any(len(p) != 2 for p in pairs):
                raise ConfigError("regions: expected name=path[,name=path...]")
            value = dict(pairs)
        if not isinstance(value, dict) or not value:
            raise ConfigError("regions: expected a table of region name = directory")
        return {str(k): str(v) for k, v in value.items()}
    if name in ("trusted_proxies", "metrics_allow", "metrics_uins"):
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
            raise ConfigError(f"{name}: expected a list of "
                              + ("UINs" if name == "metrics_uins" else
                                 "addresses or CIDR blocks"))
        listed = tuple(i.strip() for i in items if i.strip())
        for item in listed if name != "metrics_uins" else ():
            try:  # (parsed as the server parses them, http/peer.py)
                parse_network(item)
            except ConditionError:
                raise ConfigError(f"{name}: {item!r} is not an address or "
                                  "CIDR block") from None
        return listed
    if name in _INT_FIELDS:
        if isinstance(value, bool | float):  # int(True) == 1, int(8.9) == 8: refuse both
            raise ConfigError(f"{name}: expected a whole number, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: expected a whole number, got {value!r}") from None
    return str(value)


def load(config_file: str | Path | None = None, **flags: Any) -> Settings:
    """Build the settings; `flags` holds command-line values (None means not given)."""
    known = {f.name for f in fields(Settings)}
    values: dict[str, Any] = {}
    path = config_file or os.environ.get(ENV_PREFIX + "CONFIG")
    if path:
        try:
            with open(path, "rb") as fh:
                doc = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read configuration file {path}: {exc}") from None
        unknown = set(doc) - known
        if unknown:
            raise ConfigError(f"unknown setting(s) in {path}: {', '.join(sorted(unknown))}")
        values.update(doc)
    for name in known:
        env = os.environ.get(ENV_PREFIX + name.upper())
        if env is not None:
            values[name] = env
    values.update({k: v for k, v in flags.items() if v is not None})
    settings = replace(Settings(), **{k: _coerce(k, v) for k, v in values.items()})
    at_least_one = ("max_coffers", "lease_seconds", "body_timeout", "min_part_size",
                    "kmip_timeout", "lifecycle_interval", "replication_interval",
                    "replication_workers", "replication_retry_max", "scrub_interval")
    for name in at_least_one:
        if getattr(settings, name) < 1:
            raise ConfigError(f"{name} must be at least 1")
    for name in ("replication_rate", "scrub_rate"):
        if getattr(settings, name) < 0:
            raise ConfigError(f"{name} must be 0 (no limit) or more")
    if settings.kms not in ("builtin", "kmip"):
        raise ConfigError(f"kms: expected \"builtin\" or \"kmip\", got {settings.kms!r}")
    if settings.kms == "kmip":
        missing = [n for n in ("kmip_host", "kmip_cert", "kmip_key", "kmip_ca")
                   if not getattr(settings, n)]
        if missing:
            raise ConfigError(f"kms = \"kmip\" needs {', '.join(missing)}")
    return settings
