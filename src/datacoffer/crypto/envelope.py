"""The on-disk format of an encrypted blob (version 1), and streaming to and from it.

Each blob (a simple object, or one part of a multipart object) has its own random 256-bit data
key, stored only wrapped (by the service master key or a KMS key) in the blob's header. The
bytes are AES-256-GCM in chunks of 64 KiB:

    header   b"DCE" 0x01 | header length (u16) | chunk size (u32) | wrap kind (u8: 1 master,
             2 KMS) | key id length (u16) | key id (UTF-8) | wrapped key length (u16)
             | wrapped key
    chunk i  ciphertext of plaintext bytes [i*C, (i+1)*C) | 16-byte tag

Chunk i's nonce is i as a 96-bit big-endian number (the data key encrypts this blob only) and
its associated data is SHA-256(header) | i (u64) | final (u8: 1 on the last chunk). So a chunk
moved, dropped, repeated, cut short or altered, or a header swapped, makes decryption fail; an
empty blob is one final chunk of 16 bytes. The reader knows the plaintext size from the
metadata, hence which chunk must be the final one. docs/encryption.md describes the format;
a future version gets another version byte and coexists with this one.
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
    def read(cls, read: Callable[[int, int], Iterator[bytes]]) -> tuple[Header, bytes]:
        """The header of a stored blob (two small reads), and its encoded bytes."""
        try:
            magic, length = _LEAD.unpack(b"".join(read(0, _LEAD.size)))
            if magic != MAGIC or length < _LEAD.size + _FIXED.size + 4:
                raise DecryptError("the encrypted blob's header is damaged or of an unknown "
                                   "version")
            body = b"".join(read(_LEAD.size, length - _LEAD.size))
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
        self._digest = hashlib.sha256(self.header).digest()
        self._chunk = header.chunk_size
        self._pending = bytearray()
        self._index = 0

    def start(self) -> bytes:
        return self.header

    def update(self, data: bytes | bytearray | memoryview) -> bytes:
        """The ciphertext of every whole chunk that `data` completes (held back: the last,
        which may be the final one)."""
        self._pending += data
        size = self._chunk
        # keep at least one byte pending: only finish() knows which chunk is final
        full = (len(self._pending) - 1) // size
        if not full:
            return b""
        with memoryview(self._pending) as view:
            out = b"".join(self._seal(view[i * size:(i + 1) * size], final=False)
                           for i in range(full))
        del self._pending[:full * size]
        return out

    def finish(self) -> bytes:
        return self._seal(bytes(self._pending), final=True)

    def _seal(self, plain: bytes | memoryview, *, final: bool) -> bytes:
        sealed = self._aead.encrypt(_nonce(self._index), plain,
                                    _aad(self._digest, self._index, final))
        self._index += 1
        return sealed


def read_plain(read: Callable[[int, int], Iterator[bytes]], size: int, start: int, length: int,
               open_key: Callable[[Header], bytes]) -> Iterator[bytes]:
    """Plaintext bytes [start, start+length) of an encrypted blob holding `size` bytes.

    `read(offset, count)` yields the stored bytes; only the chunks that hold the range are read
    and decrypted. `open_key` unwraps the header's data key (raising the KMS's refusal).
    """
    header, encoded = Header.read(read)
    aead = AESGCM(open_key(header))
    digest = hashlib.sha256(encoded).digest()
    chunk, last = header.chunk_size, chunk_count(size, header.chunk_size) - 1
    if length <= 0:
        return
    first_i, last_i = start // chunk, (start + length - 1) // chunk

    def stored(index: int) -> int:
        return chunk + TAG if index != last else size - last * chunk + TAG

    offset = len(encoded) + first_i * (chunk + TAG)
    count = sum(stored(i) for i in range(first_i, last_i + 1))
    buf = bytearray()
    index = first_i
    try:
        for piece in read(offset, count):
            buf += piece
            while index <= last_i and len(buf) >= stored(index):
                take = stored(index)
                plain = _open(aead, bytes(buf[:take]), index, digest, index == last)
                del buf[:take]
                lo = max(start - index * chunk, 0)
                yield plain[lo:start + length - index * chunk]
                index += 1
    except OSError:  # the file is shorter than the chunks it must hold
        raise DecryptError("the encrypted blob is shorter than its size") from None


def _open(aead: AESGCM, sealed: bytes, index: int, digest: bytes, final: bool) -> bytes:
    try:
        return aead.decrypt(_nonce(index), sealed, _aad(digest, index, final))
    except InvalidTag:
        raise DecryptError(f"chunk {index} of the encrypted blob does not decrypt") from None
