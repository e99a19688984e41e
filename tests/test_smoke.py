"""The basic path: make a coffer, store an object, read it back, list it."""

from __future__ import annotations

import hashlib


def test_put_get_head_list(client, coffer):
    data = b"hello, coffer" * 1000
    r = client.put(f"/{coffer}/dir/hello.txt", content=data,
                   headers={"Content-Type": "text/plain"})
    assert r.status_code == 200, r.text
    assert r.headers["etag"] == f'"{hashlib.md5(data).hexdigest()}"'
    assert r.content == b""
    r = client.get(f"/{coffer}/dir/hello.txt")
    assert r.status_code == 200
    assert r.content == data
    assert r.headers["content-type"].startswith("text/plain")
    assert r.headers["x-cdcs-checksum-sha256"] == hashlib.sha256(data).hexdigest()
    assert r.headers["x-cdcs-encrypt-type"] == "0"
    assert r.headers["x-cdcs-coffer-region"] == "ap-tianjin"
    r = client.head(f"/{coffer}/dir/hello.txt")
    assert r.status_code == 200
    assert r.headers["content-length"] == str(len(data))
    r = client.get(f"/{coffer}", params={"delimiter": "/"})
    assert r.status_code == 200
    assert b"<CommonPrefixes><Prefix>dir/</Prefix></CommonPrefixes>" in r.content
