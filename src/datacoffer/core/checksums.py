"""The ETag and SHA-256 of a multipart object, made from its parts' own digests.

A multipart object is never hashed whole: its parts arrive in any order and in parallel, and
completing it must not re-read them. Its ETag is the one api.md fixes (the MD5 of the parts'
binary MD5s, then "-N"); its SHA-256 is composite in the same way (the SHA-256 of the parts'
binary SHA-256 digests, then "-N"), so the suffix tells a client which kind it has.
"""

from __future__ import annotations

import hashlib


def multipart_etag(md5s: list[bytes]) -> str:
    return f"{hashlib.md5(b''.join(md5s)).hexdigest()}-{len(md5s)}"


def multipart_sha256(sha256s: list[bytes]) -> str:
    return f"{hashlib.sha256(b''.join(sha256s)).hexdigest()}-{len(sha256s)}"
