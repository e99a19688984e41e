"""Checking a stored copy against its recorded SHA-256, and making a verified copy.

A blob is copied between regions as it is stored: an encrypted blob stays encrypted, byte for
byte, and is checked by decrypting it (every chunk is authenticated) and hashing the
plaintext; a plain blob is checked by its SHA-256. A copy becomes a blob only once checked,
so a damaged source never spreads.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from datacoffer.core.keyring import KeyOpener
from datacoffer.core.reading import decrypted
from datacoffer.core.throttle import Throttle
from datacoffer.crypto import envelope
from datacoffer.storage.blobs import READ_CHUNK, RegionStore


class BadCopy(Exception):
    """A copy's bytes do not match the object's record; the text says how."""


def _plain_chunks(fd: int, blob_id: str, size: int, open_key: KeyOpener | None,
                  throttle: Throttle | None) -> Iterator[bytes]:
    if open_key is None:
        offset = 0
        while chunk := os.pread(fd, READ_CHUNK, offset):
            if throttle is not None:
                throttle.take(len(chunk))
            offset += len(chunk)
            yield chunk
    else:
        for chunk in decrypted(fd, blob_id, size, 0, size, open_key):
            if throttle is not None:
                throttle.take(len(chunk))
            yield chunk


def check_file(path: Path, blob_id: str, size: int, sha256: str, open_key: KeyOpener | None,
               throttle: Throttle | None = None) -> None:
    """Raise BadCopy unless the file at `path` holds blob `blob_id` as recorded: `size`
    plaintext bytes whose SHA-256 is `sha256`. A missing file is a bad copy too."""
    digest, count = hashlib.sha256(), 0
    try:
        with open(path, "rb", buffering=0) as fh:
            for chunk in _plain_chunks(fh.fileno(), blob_id, size, open_key, throttle):
                digest.update(chunk)
                count += len(chunk)
    except FileNotFoundError:
        raise BadCopy("the file is missing") from None
    except OSError as exc:  # a disk that fails to read the copy: as good as damaged
        raise BadCopy(f"it cannot be read: {exc.strerror or exc}") from None
    except envelope.DecryptError as exc:
        raise BadCopy(f"it does not decrypt: {exc}") from None
    if count != size:
        raise BadCopy(f"it holds {count} bytes instead of {size}")
    if digest.hexdigest() != sha256:
        raise BadCopy("its SHA-256 differs from the recorded one")


def copy_blob(source: RegionStore, target: RegionStore, blob_id: str, size: int, sha256: str,
              open_key: KeyOpener | None, tmp_tag: str,
              throttle: Throttle | None = None) -> None:
    """Copy a blob's stored bytes from `source` to `target`, check the copy and only then
    make it the target's blob (replacing a damaged one). Raises BadCopy when the source is
    damaged (nothing changes in `target`), OSError when a region fails (also when the copy
    does not check out while the source does)."""
    # a temporary name of its own (two workers may copy the same blob at once) that tells
    # which process writes it (`tmp_tag`, Objects.copy_tag): a start removes only dead ones'
    writer = target.create(blob_id, tmp_name=f"{blob_id}.{tmp_tag}.{secrets.token_hex(4)}")
    try:
        try:
            fh = source.open_blob(blob_id)
        except FileNotFoundError:
            raise BadCopy(f"region {source.name} has lost its file") from None
        with fh:
            offset = 0
            while chunk := os.pread(fh.fileno(), READ_CHUNK, offset):
                if throttle is not None:
                    throttle.take(len(chunk))
                writer.write(chunk)
                offset += len(chunk)
        try:
            writer.commit(lambda path: check_file(path, blob_id, size, sha256, open_key))
        except BadCopy as exc:  # whose fault: the source's, or this copy's?
            check_file(source.blob_path(blob_id), blob_id, size, sha256, open_key)
            raise OSError(f"the copy written to region {target.name} did not check out "
                          f"({exc}); the source is good") from None
    except BaseException:
        writer.abort()
        raise
