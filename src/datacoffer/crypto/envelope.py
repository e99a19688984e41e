"""The on-disk format of an encrypted blob (version 1), and streaming to and from it.

Each blob (a simple object, or one part of a multipart object) has its own random 256-bit data
key, stored only wrapped (by the service master key or a KMS key) in the blob's header. The
bytes are AES-256-GCM in chunks of 64 KiB:

    header   b"DCE" 0x01 | header length (u16) | chunk size (u32) | wrap kind (u8: 1 master,
             2 KMS) | key id length (u16) | key id (UTF-8) | wrapped key length (u16)
             | wrapped key
    chunk i  ciphertext of plaintext bytes [i*C, (i+1)*C) | 16-byte tag

Chunk i's nonce is i as a 96-bit big-endian number (the data key encrypts this blob only) and
its associated data is SHA-256(header | blob id) | i (u64) | final (u8: 1 on the last chunk).
So a chunk moved, dropped, repeated, cut short or altered, a header swapped, or a whole blob
copied over another's file, makes decryption fail; an empty blob is one final chunk of 16
bytes. The reader knows the plaintext size from the metadata, hence which chunk must be the
final one and how long the file must be. docs/encryption.md describes the format; a future
version gets another version byte and coexists with this one.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"DCE\x01"
CHUNK = 64 * 1024
TAG = 16
KEY_BYTES = 32
WRAP_MASTER = 1
WRAP_KMS = 2
_LEAD = struct.Struct(">4sH")  # magic, header length
_FIXED = struct.Struct(">IBH")  # chunk size, wrap kind, key id length


class DecryptError(Exception):
    """Stored encrypted data does not decrypt: damaged, reordered, truncated or swapped."""


@dataclass(frozen=True)
class Header:
    wrap_kind: int
    key_id: str
    wrapped_key: bytes
    chunk_size: int = CHUNK

    def encode(self) -> bytes:
        key_id = self.key_id.encode()
        body = (_FIXED.pack(self.chunk_size, self.wrap_kind, len(key_id)) + key_id
                + struct.pack(">H", len(self.wrapped_key)) + self.wrapped_key)
        return _LEAD.pack(MAGIC, _LEAD.size + len(body)) + body

    @classmethod
    def read(cls, pread: Callable[[int, int], bytes]) -> tuple[Header, bytes]:
        """The header of a stored blob (two small reads), and its encoded bytes."""
        try:
            magic, length = _LEAD.unpack(pread(0, _LEAD.size))
            if magic != MAGIC or length < _LEAD.size + _FIXED.size + 2:
                raise DecryptError("the encrypted blob's header is damaged or of an unknown "
                                   "version")
            body = pread(_LEAD.size, length - _LEAD.size)
            if len(body) != length - _LEAD.size:
                raise DecryptError("the encrypted blob's header is cut short")
            chunk, kind, id_len = _FIXED.unpack_from(body)
            pos = _FIXED.size + id_len
            key_id = body[_FIXED.size:pos].decode()
            (wrapped_len,) = struct.unpack_from(">H", body, pos)
            wrapped = body[pos + 2:pos + 2 + wrapped_len]
        except (struct.error, UnicodeDecodeError, OSError):
            raise DecryptError("the encrypted blob's header is damaged") from None
        if (kind not in (WRAP_MASTER, WRAP_KMS) or len(wrapped) != wrapped_len
                or pos + 2 + wrapped_len != len(body) or not 0 < chunk <= 16 * 1024 * 1024):
            raise DecryptError("the encrypted blob's header is damaged")
        return cls(kind, key_id, wrapped, chunk), _LEAD.pack(magic, length) + body


def _nonce(index: int) -> bytes:
    return index.to_bytes(12, "big")


def _aad(header_digest: bytes, index: int, final: bool) -> bytes:
    return header_digest + struct.pack(">QB", index, 1 if final else 0)


def chunk_count(size: int, chunk: int = CHUNK) -> int:
    return max(1, -(-size // chunk))


class Sealer:
    """Encrypts a stream of plaintext into the blob format, chunk by chunk, in order."""

    def __init__(self, data_key: bytes, header: Header) -> None:
        self._aead = AESGCM(data_key)
        self.header = header.encode()
        self._digest = b""
        self._chunk = header.chunk_size
        self._pending = bytearray()
        self._index = 0

    def start(self, blob_id: str) -> bytes:
        """The header, to be written first; the chunks are bound to the blob's id."""
        self._digest = _bound(self.header, blob_id)
        return self.header

    def update(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """The sealed chunks that `data` completes. The last chunk is always held back (only
        `finish` knows which chunk is final), and whole chunks are sealed straight from
        `data`, without copying it."""
        size, out = self._chunk, []
        view, pos = memoryview(data), 0
        if self._pending:
            need = size - len(self._pending)
            if len(view) <= need:
                self._pending += view
                return out
            self._pending += view[:need]
            out.append(self._seal(self._pending, final=False))
            pos = need
        full = (len(view) - pos - 1) // size
        out += [self._seal(view[pos + i * size:pos + (i + 1) * size], final=False)
                for i in range(full)]
        self._pending = bytearray(view[pos + full * size:])
        return out

    def finish(self) -> bytes:
        return self._seal(bytes(self._pending), final=True)

    def _seal(self, plain: bytes | bytearray | memoryview, *, final: bool) -> bytes:
        sealed = self._aead.encrypt(_nonce(self._index), plain,
                                    _aad(self._digest, self._index, final))
        self._index += 1
        return sealed


def _bound(header: bytes, blob_id: str) -> bytes:
    return hashlib.sha256(header + blob_id.encode()).digest()


#: Chunks decrypted per read: one pread and one piece of output per batch (about 1 MiB).
BATCH = 16


def read_plain(pread: Callable[[int, int], bytes], stored_length: int, blob_id: str, size: int,
               start: int, length: int, open_key: Callable[[Header], bytes]) -> Iterator[bytes]:
    """Plaintext bytes [start, start+length) of the encrypted blob `blob_id`, which holds
    `size` bytes of plaintext in `stored_length` bytes.

    `pread(offset, count)` reads stored bytes; only the chunks that hold the range are read and
    decrypted, in batches. `open_key` unwraps the header's data key (raising the KMS's refusal).
    """
    header, encoded = Header.read(pread)
    chunk = header.chunk_size
    last = chunk_count(size, chunk) - 1
    if stored_length != len(encoded) + size + TAG * (last + 1):
        raise DecryptError(f"the encrypted blob is {stored_length} bytes long, not "
                           f"{len(encoded) + size + TAG * (last + 1)}")
    aead = AESGCM(open_key(header))
    digest = _bound(encoded, blob_id)
    if length <= 0:
        if size == 0:  # an empty blob is still authenticated: its one empty final chunk
            _open(aead, pread(len(encoded), TAG), 0, digest, True)
        return
    first_i, last_i = start // chunk, (start + length - 1) // chunk
    sealed_chunk = chunk + TAG
    for batch in range(first_i, last_i + 1, BATCH):
        stop = min(batch + BATCH, last_i + 1)
        offset = len(encoded) + batch * sealed_chunk
        count = (stop - batch) * sealed_chunk - (chunk - (size - last * chunk)
                                                 if stop - 1 == last else 0)
        data = pread(offset, count)
        if len(data) != count:
            raise DecryptError("the encrypted blob is shorter than its size")
        view = memoryview(data)
        plain = b"".join(
            _open(aead, view[(i - batch) * sealed_chunk:(i - batch + 1) * sealed_chunk],
                  i, digest, i == last)
            for i in range(batch, stop))
        lo = max(start - batch * chunk, 0)
        hi = min(start + length - batch * chunk, len(plain))
        yield plain if lo == 0 and hi == len(plain) else plain[lo:hi]


def _open(aead: AESGCM, sealed: bytes | memoryview, index: int, digest: bytes,
          final: bool) -> bytes:
    try:
        return aead.decrypt(_nonce(index), sealed, _aad(digest, index, final))
    except InvalidTag:
        raise DecryptError(f"chunk {index} of the encrypted blob does not decrypt") from None
