"""The ETag and SHA-256 of a multipart object, made from its parts' own digests.

A multipart object is never hashed whole: its parts arrive in any order and in parallel, and
completing it must not re-read them. Its ETag is the one api.md fixes (the MD5 of the parts'
binary MD5s, then "-N"); its SHA-256 is composite in the same way (the SHA-256 of the parts'
binary SHA-256 digests, then "-N"), so the suffix tells a client which kind it has.
"""

from __future__ import annotations

import hashlib
import zlib


def multipart_etag(md5s: list[bytes]) -> str:
    return f"{hashlib.md5(b''.join(md5s)).hexdigest()}-{len(md5s)}"


def multipart_sha256(sha256s: list[bytes]) -> str:
    return f"{hashlib.sha256(b''.join(sha256s)).hexdigest()}-{len(sha256s)}"


#: A plain (unencrypted) blob carries a CRC-32 of every CRC_CHUNK bytes, so that a read checks
#: each chunk before sending it and can turn to another region's copy at the first bad one
#: (the SHA-256 is known only at a blob's end; an encrypted blob's chunks are authenticated
#: by their decryption).
CRC_CHUNK = 1024 * 1024


class ChunkCrcs:
    """The CRC-32s of consecutive CRC_CHUNK-byte chunks of a stream, 4 bytes each."""

    def __init__(self) -> None:
        self._sums = bytearray()
        self._crc = 0
        self._filled = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            take = min(len(view), CRC_CHUNK - self._filled)
            self._crc = zlib.crc32(view[:take], self._crc)
            self._filled += take
            view = view[take:]
            if self._filled == CRC_CHUNK:
                self._sums += self._crc.to_bytes(4, "big")
                self._crc = self._filled = 0

    def digest(self) -> bytes:
        tail = self._crc.to_bytes(4, "big") if self._filled else b""
        return bytes(self._sums) + tail


def chunk_ok(crcs: bytes, index: int, data: bytes | memoryview) -> bool:
    """Whether `data` is chunk `index` of the blob whose chunk CRCs are `crcs`."""
    return zlib.crc32(data) == int.from_bytes(crcs[4 * index:4 * index + 4], "big")
