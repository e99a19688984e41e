"""What the client's methods return: plain dataclasses, never raw XML or JSON."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class Owner:
    id: str
    display_name: str


@dataclass(frozen=True)
class CofferSummary:
    """One coffer of GetService."""

    name: str
    locations: list[str]
    created: datetime


@dataclass(frozen=True)
class ServiceListing:
    owner: Owner
    coffers: list[CofferSummary]


@dataclass(frozen=True)
class ObjectSummary:
    """One object of a coffer listing."""

    key: str
    size: int
    etag: str
    last_modified: datetime
    owner: Owner


@dataclass(frozen=True)
class CofferListing:
    """One page of GetCoffer: the coffer's settings and a page of its objects."""

    name: str
    encrypt_type: int
    key_id: str
    key_region: str
    locations: list[str]
    prefix: str
    marker: str
    max_keys: int
    is_truncated: bool
    next_marker: str
    objects: list[ObjectSummary] = field(default_factory=list)
    common_prefixes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ObjectInfo:
    """The headers of HeadObject / GetObject."""

    size: int
    etag: str
    content_type: str
    last_modified: datetime
    encrypt_type: int
    #: hex SHA-256; for a multipart object the composite "<hex>-<N>" (docs/decisions.md)
    sha256: str
    #: when the coffer's lifecycle rule will remove the object, if a rule is set
    expiration: datetime | None = None
    #: with `part_number`: how many parts the object has (1 for a simple object)
    parts_count: int | None = None
    #: with `part_number`: that part's hex SHA-256 and its length
    part_sha256: str | None = None
    part_size: int | None = None

    @property
    def multipart(self) -> bool:
        return "-" in self.sha256


@dataclass(frozen=True)
class PutResult:
    etag: str


@dataclass(frozen=True)
class Upload:
    """An upload in progress (InitiateMultipartUpload, ListMultipartUploads)."""

    coffer: str
    key: str
    upload_id: str
    initiated: datetime | None = None
    initiator: Owner | None = None
    owner: Owner | None = None


@dataclass(frozen=True)
class Part:
    number: int
    etag: str
    size: int
    last_modified: datetime | None = None


@dataclass(frozen=True)
class PartListing:
    coffer: str
    key: str
    upload_id: str
    parts: list[Part]
    is_truncated: bool
    next_marker: int
    initiator: Owner | None = None
    owner: Owner | None = None


@dataclass(frozen=True)
class UploadListing:
    coffer: str
    uploads: list[Upload]
    is_truncated: bool
    next_key_marker: str
    next_upload_id_marker: str


@dataclass(frozen=True)
class CompleteResult:
    coffer: str
    key: str
    etag: str
    locations: list[str]


@dataclass(frozen=True)
class TransferResult:
    """What upload_file / download_file did, and what was verified."""

    coffer: str
    key: str
    size: int
    etag: str
    sha256: str
    #: parts uploaded or downloaded (1 for a single request)
    parts: int
    #: parts that an earlier, interrupted upload had already stored
    resumed_parts: int = 0
