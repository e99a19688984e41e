"""The q-sign signature: the algorithm of security.md, interoperability with an independent
client (cos-python-sdk-v5's CosS3Auth), presigned URLs, and every way a request is refused."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
import xml.etree.ElementTree as ET
from urllib.parse import quote

import httpx
import pytest
import requests
from qcloud_cos import CosConfig
from qcloud_cos.cos_auth import CosS3Auth

from datacoffer import signing
from tests.serverproc import ServerProcess

SECRET_ID = "AKIDexampleSecretId0000000000000"
SECRET_KEY = "exampleSecretKey0123456789abcdef"


# -- helpers -----------------------------------------------------------------------------------


def assert_error(r, status, code, resource):
    """The error document and headers of a refusal; returns the Message."""
    assert r.status_code == status, r.text
    assert r.headers["x-cdcs-error-code"] == code
    doc = ET.fromstring(r.content)
    assert doc.tag == "Error"
    assert doc.findtext("Code") == code
    assert doc.findtext("Resource") == resource
    assert doc.findtext("RequestId") == r.headers["x-cdcs-request-id"]
    assert doc.findtext("TraceId") == r.headers["x-cdcs-trace-id"]
    return doc.findtext("Message")


def host_of(server):
    return server.base_url.split("://", 1)[1]


def encode_path(path):
    return signing.urlencode(path).replace("%2F", "/")


def query_string(params):
    return "&".join(f"{signing.urlencode(k)}={signing.urlencode(v)}" for k, v in params)


def send(server, method, path, *, fields=None, query=(), headers=None, content=None):
    """Send exactly this request: `fields` (q-sign fields) go into Authorization when given."""
    url = server.base_url + encode_path(path)
    if query:
        url += "?" + query_string(query)
    headers = dict(headers or {})
    if fields is not None:
        headers["Authorization"] = signing.authorization_header(fields)
    return httpx.request(method, url, headers=headers, content=content, timeout=30)


def sign_for(server, account, method, path, params=None, headers=None, **kw):
    """q-sign fields for a request to `server`, signing `host` plus the given headers."""
    return signing.sign(account.secret_id, account.secret_key, method, path, params,
                        {"host": host_of(server), **(headers or {})}, **kw)


@pytest.fixture(scope="module")
def stored(client, account):
    """A coffer holding two small objects: (coffer, {key: bytes})."""
    name = f"sig{secrets.token_hex(4)}-{account.app_id}"
    client.make_coffer(name)
    objs = {"a.txt": b"alpha bytes 0123456789", "b.txt": b"bravo bytes 9876543210"}
    for key, data in objs.items():
        r = client.put(f"/{name}/{key}", content=data)
        assert r.status_code == 200, r.text
    return name, objs


# -- the algorithm, as a unit ------------------------------------------------------------------


def test_urlencode_leaves_only_unreserved_characters():
    assert signing.urlencode("a/b") == "a%2Fb"
    assert signing.urlencode("a b") == "a%20b"
    assert signing.urlencode("~-_.") == "~-_."
    assert signing.urlencode("AZaz09") == "AZaz09"
    assert signing.urlencode("+=&;:,*'()!") == "%2B%3D%26%3B%3A%2C%2A%27%28%29%21"
    assert signing.urlencode("\u00e9") == "%C3%A9"
    assert signing.urlencode("\u817e\u8baf") == "%E8%85%BE%E8%AE%AF"
    assert signing.urlencode("%") == "%25"
    assert signing.urlencode("") == ""


def test_known_answer_computed_from_the_spec_steps():
    """Every step of security.md written out by hand, compared with the module's output."""
    key_time = "1557989151;1557996351"
    # 1. SignKey
    sign_key = hmac.new(SECRET_KEY.encode(), key_time.encode(), hashlib.sha1).hexdigest()
    # 2.-4. HttpParameters and HttpHeaders, names lower-case, values percent-encoded by hand
    http_parameters = "max-keys=20&prefix=a%2Fb%20c"
    http_headers = ("content-type=text%2Fplain%3B%20charset%3Dutf-8&host=127.0.0.1%3A8080"
                    "&x-cdcs-meta=v~1%20%C3%A9")
    # 5. HttpString with the percent-decoded path
    http_string = ("put\n/examplecoffer-1250000000/photos/a b/\u00e9~x.txt\n"
                   f"{http_parameters}\n{http_headers}\n")
    # 6. StringToSign
    digest = hashlib.sha1(http_string.encode("utf-8")).hexdigest()
    string_to_sign = f"sha1\n{key_time}\n{digest}\n"
    # 7. Signature
    expected = hmac.new(sign_key.encode(), string_to_sign.encode(), hashlib.sha1).hexdigest()
    # The hand computation itself is pinned, so a change to this test cannot go unnoticed.
    assert sign_key == "795d592c57959063cbfd0f5a3c8d59db5e0d8f38"
    assert digest == "7a490a184a2b81e96b24766caced00d65a3f5771"
    assert expected == "b9a8eba58466aab29ade619eb86b950aa6845134"

    fields = signing.sign(
        SECRET_ID, SECRET_KEY, "PUT", "/examplecoffer-1250000000/photos/a b/\u00e9~x.txt",
        {"max-keys": "20", "Prefix": "a/b c"},
        {"host": "127.0.0.1:8080", "Content-Type": "text/plain; charset=utf-8",
         "x-cdcs-meta": "v~1 \u00e9"},
        expires=7200, now=1557989151)
    assert fields == {
        "q-sign-algorithm": "sha1", "q-ak": SECRET_ID, "q-sign-time": key_time,
        "q-key-time": key_time, "q-header-list": "content-type;host;x-cdcs-meta",
        "q-url-param-list": "max-keys;prefix", "q-signature": expected,
    }
    assert signing.authorization_header(fields) == (
        f"q-sign-algorithm=sha1&q-ak={SECRET_ID}&q-sign-time={key_time}&q-key-time={key_time}"
        f"&q-header-list=content-type;host;x-cdcs-meta&q-url-param-list=max-keys;prefix"
        f"&q-signature={expected}")
    # The verifier accepts the hand-computed signature for the same request.
    sig = signing.parse_authorization(signing.authorization_header(fields))
    signing.verify(
        sig, SECRET_KEY, "PUT", "/examplecoffer-1250000000/photos/a b/\u00e9~x.txt",
        [("max-keys", "20"), ("prefix", "a/b c")],
        {"host": "127.0.0.1:8080", "content-type": "text/plain; charset=utf-8",
         "x-cdcs-meta": "v~1 \u00e9", "user-agent": "unsigned headers do not matter"},
        now=1557990000, skew=300)


def _hand_signature(key_time, http_string):
    sign_key = hmac.new(SECRET_KEY.encode(), key_time.encode(), hashlib.sha1).hexdigest()
    to_sign = f"sha1\n{key_time}\n{hashlib.sha1(http_string.encode()).hexdigest()}\n"
    return hmac.new(sign_key.encode(), to_sign.encode(), hashlib.sha1).hexdigest()


def _hand_header(key_time: str, http_string: str, param_list: str) -> str:
    """An Authorization header signing `http_string` by hand, with `host` the only header."""
    return (f"q-sign-algorithm=sha1&q-ak={SECRET_ID}&q-sign-time={key_time}"
            f"&q-key-time={key_time}&q-header-list=host&q-url-param-list={param_list}"
            f"&q-signature={_hand_signature(key_time, http_string)}")


def test_verify_uses_the_order_in_which_parameters_are_listed():
    """HttpParameters follows q-url-param-list as listed, not a sorted order."""
    kt = "1700000000;1700000900"
    http_string = "get\n/c-1250000000\nprefix=x&max-keys=5\nhost=h\n"
    header = _hand_header(kt, http_string, "prefix;max-keys")
    query = [("max-keys", "5"), ("prefix", "x")]
    signing.verify(signing.parse_authorization(header), SECRET_KEY, "GET", "/c-1250000000",
                   query, {"host": "h"}, now=1700000100, skew=300)
    swapped = header.replace("prefix;max-keys", "max-keys;prefix")
    with pytest.raises(signing.SignatureError, match="mismatch"):
        signing.verify(signing.parse_authorization(swapped), SECRET_KEY, "GET",
                       "/c-1250000000", query, {"host": "h"}, now=1700000100, skew=300)


def test_verify_parameter_names_are_case_insensitive_and_empty_values_sign_as_empty():
    kt = "1700000000;1700000900"
    http_string = "delete\n/c-1250000000/k\nuploadid=abc&x=\nhost=h\n"
    header = _hand_header(kt, http_string, "uploadId;x")
    sig = signing.parse_authorization(header)
    assert sig.param_list == ("uploadid", "x")
    for name in ("uploadId", "uploadid", "UPLOADID"):
        signing.verify(sig, SECRET_KEY, "DELETE", "/c-1250000000/k", [(name, "abc"), ("x", "")],
                       {"host": "h"}, now=1700000100, skew=300)


def test_verify_window_boundaries_with_skew():
    fields = signing.sign(SECRET_ID, SECRET_KEY, "GET", "/", None, {"host": "h"},
                          expires=100, now=1000)
    sig = signing.parse_authorization(signing.authorization_header(fields))
    assert sig.window() == (1000, 1100)

    def check(now):
        signing.verify(sig, SECRET_KEY, "GET", "/", [], {"host": "h"}, now=now, skew=300)

    for now in (700, 1000, 1100, 1400):
        check(now)
    for now in (699, 1401, 0, 10**10):
        with pytest.raises(signing.SignatureError, match="window"):
            check(now)


def test_verify_refusals():
    fields = signing.sign(SECRET_ID, SECRET_KEY, "GET", "/c-1250000000",
                          {"prefix": "a", "policy": ""}, {"host": "h", "range": "bytes=0-1"},
                          now=1000)
    sig = signing.parse_authorization(signing.authorization_header(fields))
    good_q = [("prefix", "a"), ("policy", "")]
    good_h = {"host": "h", "range": "bytes=0-1"}

    def verify(method="GET", path="/c-1250000000", query=good_q, headers=good_h,
               key=SECRET_KEY):
        signing.verify(sig, key, method, path, query, headers, now=1000, skew=300)

    verify()
    # the presign fields and the token are never signed, so they may be present
    verify(query=[*good_q, ("q-ak", "x"), ("q-signature", "y"), ("x-cdcs-security-token", "t")])
    cases = {
        "wrong key": dict(key="x" + SECRET_KEY[1:]),
        "other method": dict(method="PUT"),
        "other path": dict(path="/c-1250000000/"),
        "tampered parameter": dict(query=[("prefix", "b"), ("policy", "")]),
        "unsigned parameter": dict(query=[*good_q, ("marker", "m")]),
        "missing parameter": dict(query=[("prefix", "a")]),
        "tampered header": dict(headers={"host": "h", "range": "bytes=0-2"}),
        "missing header": dict(headers={"host": "h"}),
        "other host": dict(headers={"host": "evil", "range": "bytes=0-1"}),
    }
    for what, kwargs in cases.items():
        with pytest.raises(signing.SignatureError):
            verify(**kwargs)
            pytest.fail(f"{what} was accepted")


def test_verify_host_signed_without_port():
    """CosS3Auth signs the host name alone while the request says `Host: name:port`."""
    fields = signing.sign(SECRET_ID, SECRET_KEY, "GET", "/", None, {"host": "127.0.0.1"},
                          now=1000)
    sig = signing.parse_authorization(signing.authorization_header(fields))
    signing.verify(sig, SECRET_KEY, "GET", "/", [], {"host": "127.0.0.1:8080"}, now=1000,
                   skew=0)
    signing.verify(sig, SECRET_KEY, "GET", "/", [], {"host": "127.0.0.1"}, now=1000, skew=0)
    with pytest.raises(signing.SignatureError):
        signing.verify(sig, SECRET_KEY, "GET", "/", [], {"host": "127.0.0.2:8080"}, now=1000,
                       skew=0)


def test_parse_authorization():
    sig = signing.parse_authorization(
        "q-sign-algorithm=sha1&q-ak=AKIDx&q-sign-time=1;2&q-key-time=1;3"
        "&q-header-list=Host;Content-Type&q-url-param-list=&q-signature=ABCDEF")
    assert sig == signing.Signature("AKIDx", "1;2", "1;3", ("host", "content-type"), (),
                                    "abcdef")
    good = {"q-sign-algorithm": "sha1", "q-ak": "AKIDx", "q-sign-time": "1;2",
            "q-key-time": "1;2", "q-header-list": "host", "q-url-param-list": "",
            "q-signature": "ab"}

    def header(**changes):
        fields = {**good, **changes}
        return "&".join(f"{k}={v}" for k, v in fields.items() if v is not None)

    bad = [
        "", "garbage", "Bearer abc", header(**{"q-ak": None}), header(**{"q-ak": ""}),
        header(**{"q-signature": None}), header(**{"q-sign-time": None}),
        header(**{"q-key-time": None}), header(**{"q-sign-algorithm": None}),
        header(**{"q-sign-algorithm": "md5"}), header(**{"q-sign-time": "abc"}),
        header(**{"q-sign-time": "1;2;3"}), header(**{"q-sign-time": "1"}),
        header(**{"q-sign-time": "-1;2"}), header(**{"q-key-time": "1;x"}),
        header() + "&dangling",
    ]
    for value in bad:
        with pytest.raises(signing.SignatureError):
            signing.parse_authorization(value)
            pytest.fail(f"accepted {value!r}")


def test_parse_presigned():
    assert signing.parse_presigned([("prefix", "a"), ("max-keys", "3")]) is None
    assert signing.parse_presigned([]) is None
    fields = signing.sign(SECRET_ID, SECRET_KEY, "GET", "/", None, {"host": "h"}, now=5)
    sig = signing.parse_presigned([("prefix", "a"), *fields.items()])
    assert sig is not None
    assert (sig.secret_id, sig.sign_time, sig.header_list, sig.signature) == (
        SECRET_ID, "5;905", ("host",), fields["q-signature"])
    with pytest.raises(signing.SignatureError):
        signing.parse_presigned([("q-ak", SECRET_ID), ("q-signature", "ab")])


# -- interoperability with CosS3Auth -----------------------------------------------------------


def cos(server, account, method, path, *, params=None, secret_key=None, **kwargs):
    """A request signed by cos-python-sdk-v5's CosS3Auth; `path` is decoded."""
    conf = CosConfig(Region="ap-tianjin", SecretId=account.secret_id,
                     SecretKey=secret_key or account.secret_key)
    auth = CosS3Auth(conf, key=path.lstrip("/") or None, params=dict(params or {}))
    url = server.base_url + quote(path.encode("utf-8"))
    return requests.request(method, url, params=params, auth=auth, timeout=30, **kwargs)


def test_cos_sdk_interoperates(server, account):
    name = f"cos{secrets.token_hex(4)}-{account.app_id}"
    body = b'{"Locations": {"Location": ["ap-tianjin"]}}'
    r = cos(server, account, "PUT", f"/{name}", data=body,
            headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    assert r.content == b""
    # CosS3Auth signed content-type, content-length and host (without the port).
    signed = signing.parse_authorization(r.request.headers["Authorization"])
    assert set(signed.header_list) == {"content-type", "content-length", "host"}

    objs = {"dir/a b+c~\u00e9.txt": bytes(range(256)) * 4, "dir/z.bin": b"zulu" * 100,
            "top.txt": b"top level"}
    for key, data in objs.items():
        md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
        r = cos(server, account, "PUT", f"/{name}/{key}", data=data,
                headers={"Content-Type": "text/plain", "Content-MD5": md5})
        assert r.status_code == 200, r.text
        assert r.headers["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'
        signed = signing.parse_authorization(r.request.headers["Authorization"])
        assert {"content-type", "content-md5", "host"} <= set(signed.header_list)

    key, data = "dir/a b+c~\u00e9.txt", objs["dir/a b+c~\u00e9.txt"]
    r = cos(server, account, "GET", f"/{name}/{key}", headers={"Range": "bytes=10-99"})
    assert r.status_code == 206, r.text
    assert r.content == data[10:100]
    assert r.headers["Content-Range"] == f"bytes 10-99/{len(data)}"
    assert "range" in signing.parse_authorization(r.request.headers["Authorization"]).header_list

    r = cos(server, account, "GET", f"/{name}/{key}")
    assert r.status_code == 200
    assert r.content == data
    assert r.headers["Content-Type"] == "text/plain"

    r = cos(server, account, "HEAD", f"/{name}/{key}")
    assert r.status_code == 200
    assert r.content == b""
    assert r.headers["Content-Length"] == str(len(data))
    assert r.headers["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'
    assert r.headers["x-cdcs-checksum-sha256"] == hashlib.sha256(data).hexdigest()

    r = cos(server, account, "GET", f"/{name}", params={"prefix": "dir/", "max-keys": "1"})
    assert r.status_code == 200, r.text
    assert set(signing.parse_authorization(r.request.headers["Authorization"]).param_list) == {
        "prefix", "max-keys"}
    doc = ET.fromstring(r.content)
    assert doc.findtext("Prefix") == "dir/"
    assert doc.findtext("MaxKeys") == "1"
    assert doc.findtext("IsTruncated") == "true"
    assert [c.findtext("Key") for c in doc.findall("Contents")] == ["dir/a b+c~\u00e9.txt"]
    r = cos(server, account, "GET", f"/{name}",
            params={"prefix": "dir/", "marker": "dir/a b+c~\u00e9.txt"})
    assert r.status_code == 200, r.text
    assert [c.findtext("Key") for c in ET.fromstring(r.content).findall("Contents")] == [
        "dir/z.bin"]

    r = cos(server, account, "GET", "/")
    assert r.status_code == 200, r.text
    names = [c.findtext("Name") for c in ET.fromstring(r.content).iter("Coffer")]
    assert name in names


def test_cos_sdk_with_a_wrong_secret_key_is_refused(server, account, stored):
    coffer, objs = stored
    r = cos(server, account, "GET", f"/{coffer}/a.txt", secret_key="x" * 32)
    assert r.status_code == 401
    assert r.headers["x-cdcs-error-code"] == "AuthFailed"
    r = cos(server, account, "GET", f"/{coffer}/a.txt")
    assert r.status_code == 200
    assert r.content == objs["a.txt"]


# -- presigned URLs ----------------------------------------------------------------------------


def presigned_url(server, secret_id, secret_key, path, params=None, **kw):
    fields = signing.sign(secret_id, secret_key, "GET", path, params,
                          {"host": host_of(server)}, **kw)
    return (server.base_url + encode_path(path) + "?"
            + query_string([*(params or {}).items(), *fields.items()]))


def test_presigned_url_plain_get(server, account, stored):
    coffer, objs = stored
    url = presigned_url(server, account.secret_id, account.secret_key, f"/{coffer}/a.txt")
    r = httpx.get(url)
    assert "authorization" not in r.request.headers
    assert r.status_code == 200, r.text
    assert r.content == objs["a.txt"]
    # a presigned listing with a signed parameter
    url = presigned_url(server, account.secret_id, account.secret_key, f"/{coffer}",
                        {"prefix": "b"})
    r = httpx.get(url)
    assert r.status_code == 200, r.text
    assert [c.findtext("Key") for c in ET.fromstring(r.content).findall("Contents")] == [
        "b.txt"]
    # the same URL with an extra, unsigned parameter, or another path, is refused
    r = httpx.get(url + "&marker=a")
    assert_error(r, 401, "AuthFailed", coffer)
    url = presigned_url(server, account.secret_id, account.secret_key, f"/{coffer}/a.txt")
    r = httpx.get(url.replace("/a.txt?", "/b.txt?"))
    assert_error(r, 401, "AuthFailed", f"{coffer}/b.txt")
    # a presigned URL of a permanent key carrying a security token is refused
    r = httpx.get(url + "&x-cdcs-security-token=abc")
    assert_error(r, 401, "AuthFailed", f"{coffer}/a.txt")


def test_presigned_url_expires(tmp_path):
    """The same URL works inside its window and is refused after it (skew set to 1 s)."""
    srv = ServerProcess(tmp_path / "data", env={"DATACOFFER_SIGN_SKEW": "1"})
    srv.start()
    try:
        c = srv.new_client()
        c.make_coffer("expiry-1250000000")
        assert c.put("/expiry-1250000000/k", content=b"presigned").status_code == 200
        c.close()
        signed_at = int(time.time())
        url = presigned_url(srv, c.secret_id, c.secret_key, "/expiry-1250000000/k",
                            expires=2, now=signed_at)
        r = httpx.get(url)
        assert r.status_code == 200, r.text
        assert r.content == b"presigned"
        # window end signed_at+2, plus 1 s of skew: wait until safely past it
        time.sleep(max(0.0, signed_at + 4.2 - time.time()))
        r = httpx.get(url)
        msg = assert_error(r, 401, "AuthFailed", "expiry-1250000000/k")
        assert "clock" in msg
        # a fresh URL for the same object works again
        r = httpx.get(presigned_url(srv, c.secret_id, c.secret_key, "/expiry-1250000000/k"))
        assert r.status_code == 200
        assert c.secret_key not in srv.log()
    finally:
        srv.stop()


# -- refusals on the wire ----------------------------------------------------------------------


def test_unsigned_request(server, stored):
    coffer, _ = stored
    r = httpx.get(server.base_url + f"/{coffer}/a.txt")
    msg = assert_error(r, 401, "AuthFailed", f"{coffer}/a.txt")
    assert "anonymous" in msg
    r = httpx.get(server.base_url + "/")
    assert_error(r, 401, "AuthFailed", "")
    r = httpx.put(server.base_url + f"/{coffer}/new.txt", content=b"x")
    assert_error(r, 401, "AuthFailed", f"{coffer}/new.txt")
    r = httpx.head(server.base_url + f"/{coffer}/a.txt")
    assert r.status_code == 401
    assert r.headers["x-cdcs-error-code"] == "AuthFailed"
    assert r.content == b""


def test_malformed_authorization(server, account, stored):
    coffer, _ = stored
    good = sign_for(server, account, "GET", f"/{coffer}/a.txt")
    assert send(server, "GET", f"/{coffer}/a.txt", fields=good).status_code == 200
    values = [
        "garbage",
        "q-sign-algorithm=sha1&q-ak=" + account.secret_id,
        signing.authorization_header({**good, "q-sign-algorithm": "hmac-sha256"}),
        signing.authorization_header({**good, "q-sign-time": "yesterday"}),
        signing.authorization_header({**good, "q-key-time": "1;2;3"}),
        signing.authorization_header({**good, "q-signature": ""}),
        signing.authorization_header(good) + "&broken",
    ]
    for value in values:
        r = send(server, "GET", f"/{coffer}/a.txt", headers={"Authorization": value})
        msg = assert_error(r, 401, "AuthFailed", f"{coffer}/a.txt")
        assert "malformed" in msg, (value, msg)


def test_unknown_secret_id(server, account, stored):
    coffer, _ = stored
    fields = signing.sign("AKID" + "Z" * 32, account.secret_key, "GET", f"/{coffer}/a.txt",
                          None, {"host": host_of(server)})
    r = send(server, "GET", f"/{coffer}/a.txt", fields=fields)
    assert_error(r, 401, "AuthFailed", f"{coffer}/a.txt")


def test_wrong_secret_key(server, account, stored):
    coffer, _ = stored
    wrong = secrets.token_hex(16)
    fields = signing.sign(account.secret_id, wrong, "GET", f"/{coffer}/a.txt", None,
                          {"host": host_of(server)})
    r = send(server, "GET", f"/{coffer}/a.txt", fields=fields)
    msg = assert_error(r, 401, "AuthFailed", f"{coffer}/a.txt")
    assert account.secret_key not in r.text
    assert wrong not in r.text
    assert "SecretKey" in msg


def test_tampered_path(server, account, stored):
    coffer, _ = stored
    fields = sign_for(server, account, "GET", f"/{coffer}/a.txt")
    assert send(server, "GET", f"/{coffer}/a.txt", fields=fields).status_code == 200
    r = send(server, "GET", f"/{coffer}/b.txt", fields=fields)
    assert_error(r, 401, "AuthFailed", f"{coffer}/b.txt")
    # the method is part of what is signed, too
    r = send(server, "HEAD", f"/{coffer}/a.txt", fields=fields)
    assert r.status_code == 401
    assert r.headers["x-cdcs-error-code"] == "AuthFailed"


def test_tampered_signed_header(server, account, stored):
    coffer, objs = stored
    fields = sign_for(server, account, "GET", f"/{coffer}/a.txt", headers={"range": "bytes=0-1"})
    r = send(server, "GET", f"/{coffer}/a.txt", fields=fields, headers={"Range": "bytes=0-1"})
    assert r.status_code == 206
    assert r.content == objs["a.txt"][:2]
    r = send(server, "GET", f"/{coffer}/a.txt", fields=fields, headers={"Range": "bytes=0-5"})
    assert_error(r, 401, "AuthFailed", f"{coffer}/a.txt")
    # a signed header left out of the request
    r = send(server, "GET", f"/{coffer}/a.txt", fields=fields)
    assert_error(r, 401, "AuthFailed", f"{coffer}/a.txt")
    # a signed host that is not the request's
    other = signing.sign(account.secret_id, account.secret_key, "GET", f"/{coffer}/a.txt",
                         None, {"host": "cdcs.example.com"})
    r = send(server, "GET", f"/{coffer}/a.txt", fields=other)
    assert_error(r, 401, "AuthFailed", f"{coffer}/a.txt")


def test_query_must_match_the_signature(server, account, stored):
    coffer, _ = stored
    path = f"/{coffer}"
    fields = sign_for(server, account, "GET", path, {"prefix": "a", "max-keys": "5"})
    r = send(server, "GET", path, fields=fields, query=[("prefix", "a"), ("max-keys", "5")])
    assert r.status_code == 200, r.text
    cases = {
        "tampered value": [("prefix", "b"), ("max-keys", "5")],
        "extra unsigned parameter": [("prefix", "a"), ("max-keys", "5"), ("marker", "a")],
        "signed parameter missing": [("prefix", "a")],
    }
    for what, query in cases.items():
        r = send(server, "GET", path, fields=fields, query=query)
        assert r.status_code == 401, what
        assert_error(r, 401, "AuthFailed", coffer)
    # unsigned extra parameter on a request signed with no parameters at all
    bare = sign_for(server, account, "GET", path)
    assert send(server, "GET", path, fields=bare).status_code == 200
    r = send(server, "GET", path, fields=bare, query=[("prefix", "a")])
    assert_error(r, 401, "AuthFailed", coffer)


def test_sign_time_window(server, account, stored):
    coffer, objs = stored
    path = f"/{coffer}/a.txt"
    t = time.time()
    refused = {
        "past": dict(now=t - 1300, expires=900),      # ended 400 s ago: beyond the 300 s skew
        "future": dict(now=t + 400, expires=900),     # starts in 400 s
    }
    for what, kw in refused.items():
        r = send(server, "GET", path, fields=sign_for(server, account, "GET", path, **kw))
        msg = assert_error(r, 401, "AuthFailed", f"{coffer}/a.txt")
        assert "window" in msg, what
    accepted = {
        "just past": dict(now=t - 1150, expires=900),  # ended 250 s ago
        "just future": dict(now=t + 250, expires=900),  # starts in 250 s
    }
    for what, kw in accepted.items():
        r = send(server, "GET", path, fields=sign_for(server, account, "GET", path, **kw))
        assert r.status_code == 200, (what, r.text)
        assert r.content == objs["a.txt"]


def test_disabled_enabled_and_deleted_key(server, account, stored):
    coffer, objs = stored
    extra = server.admin("key", "create", "--uin", account.uin)
    path = f"/{coffer}/a.txt"

    def get():
        fields = signing.sign(extra["SecretId"], extra["SecretKey"], "GET", path, None,
                              {"host": host_of(server)})
        return send(server, "GET", path, fields=fields)

    assert get().status_code == 200
    server.admin("key", "disable", "--secret-id", extra["SecretId"])
    assert_error(get(), 401, "AuthFailed", f"{coffer}/a.txt")
    # the account's other key is not affected
    assert send(server, "GET", path, fields=sign_for(server, account, "GET", path)
                ).status_code == 200
    server.admin("key", "enable", "--secret-id", extra["SecretId"])
    r = get()
    assert r.status_code == 200
    assert r.content == objs["a.txt"]
    server.admin("key", "delete", "--secret-id", extra["SecretId"])
    assert_error(get(), 401, "AuthFailed", f"{coffer}/a.txt")
    assert extra["SecretKey"] not in server.log()


def test_security_token_with_a_permanent_key_is_refused(server, account, stored):
    coffer, _ = stored
    path = f"/{coffer}/a.txt"
    fields = sign_for(server, account, "GET", path)
    r = send(server, "GET", path, fields=fields, headers={"x-cdcs-security-token": "token"})
    assert_error(r, 401, "AuthFailed", f"{coffer}/a.txt")
    r = send(server, "GET", path, fields=fields, query=[("x-cdcs-security-token", "token")])
    assert_error(r, 401, "AuthFailed", f"{coffer}/a.txt")
    # signed as a header, it is still refused
    fields = sign_for(server, account, "GET", path, headers={"x-cdcs-security-token": "token"})
    r = send(server, "GET", path, fields=fields, headers={"x-cdcs-security-token": "token"})
    assert_error(r, 401, "AuthFailed", f"{coffer}/a.txt")


def test_secret_key_never_in_messages_or_log(server, account, stored):
    coffer, _ = stored
    path = f"/{coffer}/a.txt"
    t = time.time()
    attempts = [
        signing.sign(account.secret_id, "wrong", "GET", path, None, {"host": host_of(server)}),
        sign_for(server, account, "GET", "/elsewhere"),
        sign_for(server, account, "GET", path, now=t - 5000),
        sign_for(server, account, "GET", path, headers={"range": "bytes=0-0"}),
    ]
    trace_ids = []
    for accept in ("application/xml", "application/json"):
        for fields in attempts:
            r = send(server, "GET", path, fields=fields, headers={"Accept": accept})
            assert r.status_code == 401
            assert r.headers["x-cdcs-error-code"] == "AuthFailed"
            assert account.secret_key not in r.text
            assert account.secret_key not in str(r.headers)
            trace_ids.append(r.headers["x-cdcs-trace-id"])
    deadline = time.monotonic() + 5
    while not all(t in server.log() for t in trace_ids) and time.monotonic() < deadline:
        time.sleep(0.05)
    log = server.log()
    assert all(t in log for t in trace_ids)
    assert account.secret_key not in log
