"""The basic path: make a coffer, store an object, read it back, list it."""

from __future__ import annotations

import hashlib


def test_put_get_head_list(sdk, coffer):
    data = b"hello, coffer" * 1000
    put = sdk.put_object(coffer, "dir/hello.txt", data, content_type="text/plain")
    assert put.etag == hashlib.md5(data).hexdigest()
    with sdk.get_object(coffer, "dir/hello.txt") as r:
        assert r.status == 200
        assert r.read() == data
    assert r.info.content_type.startswith("text/plain")
    assert r.info.sha256 == hashlib.sha256(data).hexdigest()
    assert r.info.encrypt_type == 0
    assert r.info.etag == put.etag
    assert sdk.head_object(coffer, "dir/hello.txt").size == len(data)
    listing = sdk.get_coffer(coffer, delimiter="/")
    assert listing.locations == ["ap-tianjin"]
    assert listing.common_prefixes == ["dir/"]
    assert listing.objects == []
