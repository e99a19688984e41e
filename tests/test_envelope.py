"""The encrypted blob format (`datacoffer.crypto.envelope`), on bytes in memory, no server.

- round trips: any size (the chunk boundaries in particular), fed to the `Sealer` in any piece
  sizes, read back whole or by any byte range; a range reads the header and then only the
  chunks that hold it;
- the exact stored size: header + size + 16 per chunk (an empty blob is one empty chunk);
- the header: encoded and read back, and every malformed header refused with `DecryptError`;
- every tampering of the stored bytes (a bit flipped anywhere, chunks swapped, dropped,
  repeated, cut short, bytes appended, a chunk or a header from another blob, a whole blob
  copied over another's file, a wrong data key) makes `read_plain` raise `DecryptError`, never
  return other bytes than the plaintext.

`pread(offset, count)` is modelled on `os.pread` over the blob's file (as `core/objects.py`
calls it): it returns at most `count` bytes, fewer at the end of the file; `stored_length` is
the file's size (`os.fstat`).
"""

from __future__ import annotations

import hashlib
import os
import random
import struct
import time

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from datacoffer.crypto.envelope import (
    BATCH,
    CHUNK,
    MAGIC,
    TAG,
    WRAP_KMS,
    WRAP_MASTER,
    DecryptError,
    Header,
    Sealer,
    chunk_count,
    read_plain,
)
from datacoffer.rootkey import SealingKey

KEY = bytes(range(32))
OTHER_KEY = bytes(range(100, 132))
BLOB = "0123456789abcdef0123456789abcdef"
OTHER_BLOB = "fedcba9876543210fedcba9876543210"
HEADER = Header(WRAP_MASTER, "", b"\x01" + bytes(12) + bytes(range(48)))  # 61 bytes, as kind 1
KMS_HEADER = Header(WRAP_KMS, "0f8fad5b-d9cb-469f-a165-70867728950e", bytes(range(60)))
HLEN = len(HEADER.encode())
BOUNDARY_SIZES = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 5]


# -- helpers -------------------------------------------------------------------------------------

def plaintext(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def seal(plain: bytes, key: bytes = KEY, header: Header = HEADER,
         pieces: list[int] | None = None, blob_id: str = BLOB) -> bytes:
    """The stored bytes of `plain`, fed to `Sealer.update` in pieces of the given sizes (cycled),
    checking that the updates hand out whole sealed chunks only, and every one they can (all but
    the last, which may be the final one)."""
    sealer = Sealer(key, header)
    out = [sealer.start(blob_id)]
    pos = emitted = 0
    cycle = pieces or [len(plain) or 1]
    i = 0
    while pos < len(plain):
        piece = plain[pos:pos + cycle[i % len(cycle)]]
        i += 1
        pos += len(piece)
        sealed = sealer.update(piece)
        assert all(len(c) == CHUNK + TAG for c in sealed)
        out += sealed
        emitted += len(sealed)
        assert emitted == max(0, (pos - 1) // CHUNK), (pos, emitted)
    out.append(sealer.finish())
    return b"".join(out)


def stored_size(header_len: int, size: int) -> int:
    return header_len + size + TAG * max(1, -(-size // CHUNK))


class Stored:
    """A blob file's bytes in memory, read like `os.pread`; it records what it is asked."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.spans: list[tuple[int, int]] = []

    def pread(self, offset: int, count: int) -> bytes:
        assert offset >= 0 and count >= 0
        self.spans.append((offset, count))
        return self.data[offset:offset + count]


def opener(key: bytes = KEY, expect: Header | None = None):
    def open_key(header: Header) -> bytes:
        if expect is not None:
            assert header == expect
        return key
    return open_key


def read_all(data: bytes, size: int, start: int = 0, length: int | None = None, *,
             key: bytes = KEY, blob_id: str = BLOB, stored_length: int | None = None) -> bytes:
    length = size - start if length is None else length
    stored_length = len(data) if stored_length is None else stored_length
    return b"".join(read_plain(Stored(data).pread, stored_length, blob_id, size, start, length,
                               opener(key)))


def refuses(data: bytes, size: int, *, key: bytes = KEY, blob_id: str = BLOB,
            stored_length: int | None = None, start: int = 0,
            length: int | None = None) -> bytes:
    """read_plain raises DecryptError; returns what it yielded before (verified plaintext of
    the chunks before the damaged ones), for the caller to check as a prefix."""
    got = bytearray()
    length = size - start if length is None else length
    stored_length = len(data) if stored_length is None else stored_length
    with pytest.raises(DecryptError):
        for piece in read_plain(Stored(data).pread, stored_length, blob_id, size, start, length,
                                opener(key)):
            got += piece
    return bytes(got)


def chunk_spans(header_len: int, size: int) -> list[tuple[int, int]]:
    """(offset, length) of each stored chunk."""
    n = chunk_count(size)
    return [(header_len + i * (CHUNK + TAG),
             (CHUNK if i < n - 1 else size - (n - 1) * CHUNK) + TAG) for i in range(n)]


def check_reads(stored: Stored, header_len: int, size: int, start: int, length: int) -> None:
    """What read_plain asked for: the header, then exactly the stored bytes of the chunks that
    hold [start, start+length), each once, in order (none for an empty range, but the one empty
    chunk of an empty blob, which is authenticated)."""
    header_reads = [s for s in stored.spans if s[0] < header_len]
    assert stored.spans[:len(header_reads)] == header_reads
    assert all(o + c <= header_len for o, c in header_reads), stored.spans
    assert sum(c for _, c in header_reads) == header_len
    chunk_reads = stored.spans[len(header_reads):]
    if length == 0:
        assert chunk_reads == ([(header_len, TAG)] if size == 0 else [])
        return
    first_i, last_i = start // CHUNK, (start + length - 1) // CHUNK
    spans = chunk_spans(header_len, size)
    lo, hi = spans[first_i][0], spans[last_i][0] + spans[last_i][1]
    pos = lo
    for offset, count in chunk_reads:
        assert offset == pos and count <= BATCH * (CHUNK + TAG), (
            f"range [{start}, {start + length}) needs chunks {first_i}..{last_i} = stored "
            f"[{lo}, {hi}), but read {chunk_reads}")
        pos += count
    assert pos == hi, (f"range [{start}, {start + length}) needs stored [{lo}, {hi}), "
                       f"read {chunk_reads}")


# -- round trips ---------------------------------------------------------------------------------

@pytest.mark.parametrize("size", BOUNDARY_SIZES)
def test_round_trip_at_chunk_boundaries(size):
    plain = plaintext(size, size)
    rnd = random.Random(size)
    for pieces in ([size or 1], [1], [CHUNK], [CHUNK - 1, 2], [CHUNK + 1],
                   [rnd.randint(1, 100_000) for _ in range(10)]):
        if pieces == [1] and size > 70_000:
            pieces = [1] * 7 + [CHUNK + 3]  # byte by byte at the start, then bigger
        data = seal(plain, pieces=pieces)
        assert len(data) == stored_size(HLEN, size)
        assert data.startswith(HEADER.encode())
        assert read_all(data, size) == plain
    # every range whose ends are at or next to a chunk boundary
    marks = sorted({m for b in range(0, size + CHUNK, CHUNK) for m in (b - 1, b, b + 1)
                    if 0 <= m <= size})
    for start in marks:
        for end in marks:
            if end < start:
                continue
            stored = Stored(data)
            got = b"".join(read_plain(stored.pread, len(data), BLOB, size, start, end - start,
                                      opener()))
            assert got == plain[start:end], (start, end)
            check_reads(stored, HLEN, size, start, end - start)


def test_empty_blob_is_one_empty_final_chunk():
    data = seal(b"")
    assert len(data) == HLEN + TAG
    assert read_all(data, 0) == b""
    assert len(seal(b"x")) == HLEN + 1 + TAG


def test_empty_update_and_finish_right_after_a_full_chunk():
    sealer = Sealer(KEY, HEADER)
    out = [sealer.start(BLOB)]
    assert sealer.update(b"") == []
    out += sealer.update(bytes(CHUNK))  # exactly one chunk: held back, it may be the final one
    assert out[1:] == []
    assert sealer.update(b"") == []
    out.append(sealer.finish())
    data = b"".join(out)
    assert len(data) == stored_size(HLEN, CHUNK)
    assert read_all(data, CHUNK) == bytes(CHUNK)


def test_update_accepts_bytearray_and_memoryview_and_copies_what_it_keeps():
    plain = plaintext(2 * CHUNK + 10, 4)
    buf = bytearray(plain[:CHUNK + 5])
    sealer = Sealer(KEY, HEADER)
    out = [sealer.start(BLOB), *sealer.update(buf)]
    buf[:] = bytes(len(buf))  # the caller reuses its buffer: what was held back is a copy
    out += sealer.update(memoryview(plain)[CHUNK + 5:])
    out.append(sealer.finish())
    assert read_all(b"".join(out), len(plain)) == plain


@st.composite
def blob_cases(draw):
    size = draw(st.one_of(st.integers(0, 300 * 1024), st.sampled_from(BOUNDARY_SIZES),
                          st.builds(lambda k, d: max(0, k * CHUNK + d), st.integers(0, 4),
                                    st.integers(-2, 2))))
    pieces = draw(st.lists(st.one_of(st.integers(1, 64), st.integers(1, 3 * CHUNK)),
                           min_size=1, max_size=8))
    pieces.append(draw(st.integers(CHUNK // 2, 3 * CHUNK)))  # not byte by byte throughout
    start = draw(st.integers(0, size))
    length = draw(st.one_of(st.integers(0, size - start), st.just(size - start),
                            st.integers(0, min(size - start, 3))))
    seed = draw(st.integers(0, 2**32))
    header = draw(st.sampled_from([HEADER, KMS_HEADER]))
    return size, pieces, start, length, seed, header


@settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(blob_cases())
@example((3 * CHUNK + 5, [CHUNK], CHUNK + 10, 20, 1, HEADER))  # inside chunk 1
@example((3 * CHUNK + 5, [1, CHUNK], 3 * CHUNK, 5, 2, HEADER))  # the final chunk
@example((3 * CHUNK, [100_000], 2 * CHUNK - 1, 2, 3, HEADER))  # straddles chunks 1 and 2
@example((0, [1], 0, 0, 4, KMS_HEADER))
def test_round_trip_any_size_pieces_and_range(case):
    size, pieces, start, length, seed, header = case
    plain = plaintext(size, seed)
    data = seal(plain, header=header, pieces=pieces)
    header_len = len(header.encode())
    assert len(data) == stored_size(header_len, size)
    assert read_all(data, size) == plain
    stored = Stored(data)
    got = b"".join(read_plain(stored.pread, len(data), BLOB, size, start, length,
                              opener(expect=header)))
    assert got == plain[start:start + length]
    check_reads(stored, header_len, size, start, length)


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_a_range_inside_chunk_k_reads_only_the_header_and_chunk_k(k):
    size = 3 * CHUNK + 5
    plain = plaintext(size, 7)
    data = seal(plain)
    start, length = k * CHUNK + 2, 3
    stored = Stored(data)
    assert b"".join(read_plain(stored.pread, len(data), BLOB, size, start, length,
                               opener())) == plain[start:start + length]
    header_reads = [s for s in stored.spans if s[0] < HLEN]
    assert sum(c for _, c in header_reads) == HLEN
    assert all(o + c <= HLEN for o, c in header_reads)
    assert [s for s in stored.spans if s[0] >= HLEN] == [chunk_spans(HLEN, size)[k]]


def test_a_long_read_goes_in_batches_of_chunks():
    size = 40 * CHUNK + 77
    plain = plaintext(size, 8)
    data = seal(plain, pieces=[1 << 20])
    for start, length in [(0, size), (5, size - 10), (17 * CHUNK - 1, 2), (33 * CHUNK, 1)]:
        stored = Stored(data)
        pieces = list(read_plain(stored.pread, len(data), BLOB, size, start, length, opener()))
        assert b"".join(pieces) == plain[start:start + length]
        check_reads(stored, HLEN, size, start, length)
        assert len(pieces) == len([s for s in stored.spans if s[0] >= HLEN])


def test_only_the_chunks_read_are_checked():
    """Damage in chunk 2 does not stop a read of chunk 0 (it is never read); it stops every
    read that touches chunk 2."""
    size = 3 * CHUNK
    plain = plaintext(size, 3)
    data = bytearray(seal(plain))
    offset, _ = chunk_spans(HLEN, size)[2]
    data[offset + 10] ^= 1
    assert read_all(bytes(data), size, 0, 100) == plain[:100]
    assert read_all(bytes(data), size, CHUNK, CHUNK) == plain[CHUNK:2 * CHUNK]
    refuses(bytes(data), size, start=2 * CHUNK - 1, length=2)
    refuses(bytes(data), size, start=size - 1, length=1)


# -- the header ----------------------------------------------------------------------------------

@pytest.mark.parametrize("header", [HEADER, KMS_HEADER,
                                    Header(WRAP_KMS, "clé-ключ-鍵", b"\x00\xff" * 40),
                                    Header(WRAP_MASTER, "", b"ab", 4096)])
def test_header_encodes_and_reads_back(header):
    encoded = header.encode()
    magic, length, chunk, kind, id_len = struct.unpack_from(">4sHIBH", encoded)
    key_id = header.key_id.encode()
    assert magic == b"DCE\x01" == MAGIC and length == len(encoded)
    assert (chunk, kind, id_len) == (header.chunk_size, header.wrap_kind, len(key_id))
    assert encoded[13:13 + id_len] == key_id
    (wrapped_len,) = struct.unpack_from(">H", encoded, 13 + id_len)
    assert wrapped_len == len(header.wrapped_key)
    assert encoded[15 + id_len:] == header.wrapped_key
    stored = Stored(encoded + b"chunks follow")
    got, raw = Header.read(stored.pread)
    assert got == header and raw == encoded
    assert len(stored.spans) == 2 and all(o + c <= len(encoded) for o, c in stored.spans)


@settings(deadline=None, max_examples=80)
@given(st.sampled_from([WRAP_MASTER, WRAP_KMS]), st.text(max_size=80),
       st.binary(min_size=2, max_size=300), st.integers(1, 16 * 1024 * 1024))
def test_header_round_trip_property(kind, key_id, wrapped, chunk):
    # (a wrapped key of 0 or 1 byte with an empty key id makes a header shorter than the
    # minimum Header.read accepts: no real wrapped key is that short)
    header = Header(kind, key_id, wrapped, chunk)
    encoded = header.encode()
    assert Header.read(Stored(encoded).pread) == (header, encoded)


def _header_fields(**change) -> bytes:
    """An encoded header with some fields set to other (possibly inconsistent) values."""
    key_id = change.get("key_id", b"kid")
    wrapped = change.get("wrapped", b"W" * 40)
    body = (struct.pack(">IBH", change.get("chunk", CHUNK), change.get("kind", WRAP_KMS),
                        change.get("id_len", len(key_id))) + key_id
            + struct.pack(">H", change.get("wrapped_len", len(wrapped))) + wrapped
            + change.get("extra", b""))
    length = change.get("length", 6 + len(body))
    return change.get("magic", MAGIC) + struct.pack(">H", length) + body


def test_header_helper_makes_a_valid_header():
    header, _ = Header.read(Stored(_header_fields()).pread)
    assert header == Header(WRAP_KMS, "kid", b"W" * 40)


BAD_HEADERS = {
    "bad magic": _header_fields(magic=b"XCE\x01"),
    "lowercase magic": _header_fields(magic=b"dce\x01"),
    "version 0": _header_fields(magic=b"DCE\x00"),
    "version 2": _header_fields(magic=b"DCE\x02"),
    "version 255": _header_fields(magic=b"DCE\xff"),
    "wrap kind 0": _header_fields(kind=0),
    "wrap kind 3": _header_fields(kind=3),
    "wrap kind 255": _header_fields(kind=255),
    "chunk size 0": _header_fields(chunk=0),
    "chunk size over 16 MiB": _header_fields(chunk=16 * 1024 * 1024 + 1),
    "chunk size 2**32-1": _header_fields(chunk=2**32 - 1),
    "header length 0": _header_fields(length=0),
    "header length below the fixed fields": _header_fields(length=10),
    "header length one short": _header_fields(length=6 + 7 + 3 + 2 + 40 - 1),
    "header length one long": _header_fields(extra=b"\x00"),
    "key id length past the header": _header_fields(id_len=500),
    "key id length one long": _header_fields(id_len=4),
    "key id length one short": _header_fields(id_len=2),
    "wrapped length one long": _header_fields(wrapped_len=41),
    "wrapped length one short": _header_fields(wrapped_len=39),
    "wrapped length past the header": _header_fields(wrapped_len=65535),
    "key id not UTF-8": _header_fields(key_id=b"\xff\xfe\xfd"),
    "nothing stored": b"",
    "only the magic": MAGIC,
}


@pytest.mark.parametrize("name", list(BAD_HEADERS))
def test_malformed_header_is_refused(name):
    raw = BAD_HEADERS[name]
    with pytest.raises(DecryptError):
        Header.read(Stored(raw).pread)

    def no_key(header: Header) -> bytes:  # pragma: no cover - must not be called
        raise AssertionError("open_key called for a malformed header")

    # read_plain refuses it the same way, before asking for the key
    data = raw + bytes(100 + TAG)
    with pytest.raises(DecryptError):
        b"".join(read_plain(Stored(data).pread, len(data), BLOB, 100, 0, 100, no_key))


def test_header_length_past_the_stored_bytes_is_refused():
    raw = _header_fields(length=65535)
    with pytest.raises(DecryptError):
        Header.read(Stored(raw).pread)


def test_header_length_past_the_header_is_refused_by_read_plain():
    for length in (65535, HLEN + 1, HLEN + TAG):
        data = bytearray(seal(_TAMPER_PLAIN_SMALL))
        struct.pack_into(">H", data, 4, length)
        refuses(bytes(data), len(_TAMPER_PLAIN_SMALL))
        empty = bytearray(seal(b""))
        struct.pack_into(">H", empty, 4, length)
        refuses(bytes(empty), 0)


_TAMPER_PLAIN_SMALL = plaintext(1000, 99)


@pytest.mark.parametrize("header", [HEADER, KMS_HEADER])
def test_truncated_header_is_refused_at_every_length(header):
    encoded = header.encode()
    for cut in range(len(encoded)):
        with pytest.raises(DecryptError):
            Header.read(Stored(encoded[:cut]).pread)
        with pytest.raises(DecryptError):
            b"".join(read_plain(Stored(encoded[:cut]).pread, cut, BLOB, 0, 0, 0, opener()))


def test_header_read_failing_with_oserror_is_a_decrypt_error():
    def broken(offset: int, count: int) -> bytes:
        raise OSError(5, "Input/output error")
    with pytest.raises(DecryptError):
        Header.read(broken)


# -- tampering -----------------------------------------------------------------------------------

TAMPER_SIZE = 2 * CHUNK + 1234  # three chunks, the last partial
_TAMPER_PLAIN = plaintext(TAMPER_SIZE, 11)
_TAMPER_BLOB = seal(_TAMPER_PLAIN)


def _flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def test_the_tamper_blob_reads_back():
    assert len(_TAMPER_BLOB) == stored_size(HLEN, TAMPER_SIZE)
    assert chunk_count(TAMPER_SIZE) == 3
    assert read_all(_TAMPER_BLOB, TAMPER_SIZE) == _TAMPER_PLAIN


@settings(deadline=None, max_examples=300)
@given(st.integers(0, len(_TAMPER_BLOB) * 8 - 1))
@example(0)
@example(HLEN * 8 - 1)  # the last bit of the header
@example(HLEN * 8)  # the first bit of chunk 0
@example(len(_TAMPER_BLOB) * 8 - 1)  # the last bit of the final tag
def test_any_flipped_bit_is_refused(bit):
    got = refuses(_flip(_TAMPER_BLOB, bit), TAMPER_SIZE)
    assert _TAMPER_PLAIN.startswith(got)


def test_every_header_bit_and_every_tag_bit_flipped_is_refused():
    """Exhaustively: each bit of the header, and each bit of each chunk's first and last byte
    and of its tag."""
    bits = list(range(HLEN * 8))
    for offset, count in chunk_spans(HLEN, TAMPER_SIZE):
        for byte in [offset, offset + count - TAG - 1,
                     *range(offset + count - TAG, offset + count)]:
            bits.extend(range(byte * 8, byte * 8 + 8))
    for bit in bits:
        got = refuses(_flip(_TAMPER_BLOB, bit), TAMPER_SIZE)
        assert _TAMPER_PLAIN.startswith(got), bit


def test_flipped_bit_is_refused_on_a_two_chunk_blob():
    size = CHUNK + 1
    plain = plaintext(size, 12)
    data = seal(plain)
    for bit in random.Random(5).sample(range(len(data) * 8), 200):
        got = refuses(_flip(data, bit), size)
        assert plain.startswith(got)


def test_flipped_bit_in_an_empty_blob_is_refused():
    data = seal(b"")
    for bit in range(len(data) * 8):
        refuses(_flip(data, bit), 0)


def _chunks(data: bytes, size: int) -> tuple[bytes, list[bytes]]:
    hlen = struct.unpack_from(">H", data, 4)[0]
    return data[:hlen], [data[o:o + c] for o, c in chunk_spans(hlen, size)]


def test_swapped_chunks_are_refused():
    size = 3 * CHUNK
    header, chunks = _chunks(seal(plaintext(size, 13)), size)
    for i, j in [(0, 1), (1, 2), (0, 2)]:
        swapped = list(chunks)
        swapped[i], swapped[j] = swapped[j], swapped[i]
        refuses(header + b"".join(swapped), size)
    # a chunk repeated in the place of the next
    refuses(header + chunks[0] + chunks[0] + chunks[2], size)


def test_dropped_chunk_is_refused():
    size = 3 * CHUNK + 5
    header, chunks = _chunks(seal(plaintext(size, 14)), size)
    for drop in range(4):
        kept = header + b"".join(c for i, c in enumerate(chunks) if i != drop)
        refuses(kept, size)  # the metadata's size unchanged: the blob is short
        refuses(kept, size, stored_length=len(kept) + len(chunks[drop]))  # a lying length
        if drop < 3:  # the size edited as well, to match what is left
            refuses(kept, size - CHUNK)


def test_dropped_final_chunk_is_refused_even_with_the_size_edited_to_match():
    """Without the final chunk, chunk 2 would be read as final: its associated data says it is
    not, so it does not open."""
    size = 3 * CHUNK + 5
    header, chunks = _chunks(seal(plaintext(size, 15)), size)
    refuses(header + b"".join(chunks[:3]), 3 * CHUNK)
    refuses(header + b"".join(chunks[:3]), size)
    # and a blob of exactly 3 chunks cut to 2, read as a blob of 2
    size3 = 3 * CHUNK
    h3, c3 = _chunks(seal(plaintext(size3, 16)), size3)
    refuses(h3 + b"".join(c3[:2]), 2 * CHUNK)
    # a range of the last remaining chunk is refused too
    refuses(h3 + b"".join(c3[:2]), 2 * CHUNK, start=2 * CHUNK - 1, length=1)


TRUNCATIONS = ["header", "chunk0", "boundary1", "tag1", "boundary2", "final-1", "final-tag"]


def _cut_at(cut: str) -> int:
    spans = chunk_spans(HLEN, TAMPER_SIZE)
    return {"header": HLEN - 1, "chunk0": HLEN + 100, "boundary1": spans[1][0],
            "tag1": spans[1][0] + spans[1][1] - 3, "boundary2": spans[2][0],
            "final-1": len(_TAMPER_BLOB) - 1, "final-tag": len(_TAMPER_BLOB) - TAG}[cut]


@pytest.mark.parametrize("cut", TRUNCATIONS)
def test_truncated_blob_is_refused(cut):
    data = _TAMPER_BLOB[:_cut_at(cut)]
    assert refuses(data, TAMPER_SIZE) == b""  # the length is checked before any chunk
    # a file that shrinks after its length was taken: the short read is refused
    got = refuses(data, TAMPER_SIZE, stored_length=len(_TAMPER_BLOB))
    assert _TAMPER_PLAIN.startswith(got)
    # a range in a chunk that survived the cut is refused too: the file's length is wrong
    refuses(data, TAMPER_SIZE, start=0, length=1)


@pytest.mark.parametrize("extra", [b"\x00", bytes(TAG), bytes(CHUNK + TAG)])
def test_bytes_appended_are_refused(extra):
    refuses(_TAMPER_BLOB + extra, TAMPER_SIZE)
    refuses(_TAMPER_BLOB + extra, TAMPER_SIZE, start=0, length=1)


def test_chunk_from_another_blob_is_refused():
    size = 3 * CHUNK
    plain_a, plain_b = plaintext(size, 21), plaintext(size, 22)
    # another data key (as every blob has): the chunk does not open
    head_a, chunks_a = _chunks(seal(plain_a, KEY), size)
    head_b, chunks_b = _chunks(seal(plain_b, OTHER_KEY), size)
    for i in range(3):
        spliced = list(chunks_b)
        spliced[i] = chunks_a[i]
        got = refuses(head_b + b"".join(spliced), size, key=OTHER_KEY)
        assert plain_b.startswith(got)
    # the same data key but another header (another wrapped key, or another key id): the
    # header's digest is bound into every chunk
    for other in [Header(WRAP_MASTER, "", HEADER.wrapped_key[:-1] + b"\x00"),
                  Header(WRAP_KMS, "k", HEADER.wrapped_key)]:
        head_c, chunks_c = _chunks(seal(plain_b, KEY, other), size)
        assert head_c != head_a
        for i in range(3):
            spliced = list(chunks_c)
            spliced[i] = chunks_a[i]
            got = refuses(head_c + b"".join(spliced), size)
            assert plain_b.startswith(got)
        # a header swapped onto another blob's chunks
        refuses(head_c + b"".join(chunks_a), size)
        refuses(head_a + b"".join(chunks_c), size)
    # the same data key and header but another blob: the blob id is bound as well
    head_d, chunks_d = _chunks(seal(plain_b, KEY, HEADER, blob_id=OTHER_BLOB), size)
    assert head_d == head_a
    spliced = list(chunks_a)
    spliced[1] = chunks_d[1]
    got = refuses(head_a + b"".join(spliced), size)
    assert plain_a.startswith(got)


def test_whole_blob_copied_over_another_blobs_file_is_refused():
    """Even with the same header and data key, a blob is read only under its own id."""
    data = seal(_TAMPER_PLAIN, blob_id=OTHER_BLOB)
    assert read_all(data, TAMPER_SIZE, blob_id=OTHER_BLOB) == _TAMPER_PLAIN
    refuses(data, TAMPER_SIZE, blob_id=BLOB)
    refuses(data, TAMPER_SIZE, blob_id=BLOB, start=CHUNK, length=1)
    refuses(seal(b"", blob_id=OTHER_BLOB), 0, blob_id=BLOB)


def test_wrong_data_key_is_refused():
    refuses(_TAMPER_BLOB, TAMPER_SIZE, key=OTHER_KEY)
    refuses(_TAMPER_BLOB, TAMPER_SIZE, key=OTHER_KEY, start=CHUNK + 3, length=10)
    refuses(seal(b""), 0, key=OTHER_KEY)
    # with a real master-key wrapping: a header (and data key) from another blob
    master = SealingKey(os.urandom(32))
    blobs = []
    for _ in range(2):
        data_key = os.urandom(32)
        header = Header(WRAP_MASTER, "", master.seal(data_key, "data-key"))
        blobs.append(seal(_TAMPER_PLAIN, data_key, header))

    def open_key(header: Header) -> bytes:
        return master.open(header.wrapped_key, "data-key")

    def whole(data: bytes) -> bytes:
        return b"".join(read_plain(Stored(data).pread, len(data), BLOB, TAMPER_SIZE, 0,
                                   TAMPER_SIZE, open_key))

    assert whole(blobs[0]) == whole(blobs[1]) == _TAMPER_PLAIN
    head_0, _ = _chunks(blobs[0], TAMPER_SIZE)
    _, chunks_1 = _chunks(blobs[1], TAMPER_SIZE)
    with pytest.raises(DecryptError):
        whole(head_0 + b"".join(chunks_1))


def test_opener_refusal_propagates_before_any_byte():
    class Refused(Exception):
        pass

    def refuse(header: Header) -> bytes:
        raise Refused

    stored = Stored(_TAMPER_BLOB)
    with pytest.raises(Refused):
        next(read_plain(stored.pread, len(_TAMPER_BLOB), BLOB, TAMPER_SIZE, 0, 10, refuse))
    assert all(o + c <= HLEN for o, c in stored.spans)  # no chunk was read


def test_same_plaintext_under_two_keys_gives_different_bytes():
    plain = plaintext(2 * CHUNK + 7, 31)
    a, b = seal(plain, KEY), seal(plain, OTHER_KEY)
    assert a != b
    _, chunks_a = _chunks(a, len(plain))
    _, chunks_b = _chunks(b, len(plain))
    assert all(x != y for x, y in zip(chunks_a, chunks_b, strict=True))
    assert plain[:1000] not in a and plain[:1000] not in b
    assert read_all(a, len(plain)) == read_all(b, len(plain), key=OTHER_KEY) == plain


# -- speed (printed, not asserted) ---------------------------------------------------------------

def test_speed_sanity(capsys):
    size = 64 * 1024 * 1024
    piece = 1024 * 1024
    block = os.urandom(piece)
    sealer = Sealer(KEY, HEADER)
    out = [sealer.start(BLOB)]
    t0 = time.perf_counter()
    for _ in range(size // piece):
        out += sealer.update(block)
    out.append(sealer.finish())
    seal_s = time.perf_counter() - t0
    data = b"".join(out)
    del out
    assert len(data) == stored_size(HLEN, size)
    digest = hashlib.sha256()
    stored = Stored(data)
    t0 = time.perf_counter()
    for part in read_plain(stored.pread, len(data), BLOB, size, 0, size, opener()):
        digest.update(part)
    open_s = time.perf_counter() - t0
    assert digest.digest() == hashlib.sha256(block * (size // piece)).digest()
    with capsys.disabled():
        print(f"\nenvelope speed: seal {64 / seal_s:.0f} MiB/s, open {64 / open_s:.0f} MiB/s "
              "(64 MiB in 1 MiB pieces, in memory; open includes SHA-256 of the output)")
