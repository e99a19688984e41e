"""`RetryPolicy` and the Client's retries, against a stand-in HTTP server that answers what each
test scripts (error codes, a connection closed without an answer) and counts the requests."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from datacoffer.client import Client, RetryPolicy, errors
from datacoffer.errors import CODES
from tests.serverproc import free_port

FAST = RetryPolicy(attempts=5, base=0.001, cap=0.01)
SERVICE_XML = (b'<?xml version="1.0" encoding="UTF-8"?><ListAllMyCoffersResult><Owner>'
               b"<ID>qcs::cam::uin/1:uin/1</ID><DisplayName>1</DisplayName></Owner>"
               b"<Coffers/></ListAllMyCoffersResult>")
OBJECT_HEADERS = {"ETag": '"0123456789abcdef0123456789abcdef"',
                  "Last-Modified": "Mon, 27 May 2019 11:26:14 GMT",
                  "Content-Type": "text/plain", "x-cdcs-checksum-sha256": "ab" * 32}


def error_xml(code: str, message: str = "m") -> bytes:
    return (f"<Error><Code>{code}</Code><Message>{message}</Message><Resource>c-1/k</Resource>"
            f"<RequestId>r</RequestId><TraceId>t</TraceId></Error>").encode()


@dataclass
class Answer:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    #: close the connection without answering (after reading the whole request)
    close: bool = False


def fail(code: str, status: int | None = None) -> Answer:
    return Answer(status or CODES[code].status, error_xml(code),
                  {"Content-Type": "application/xml", "x-cdcs-request-id": f"req-{code}",
                   "x-cdcs-error-code": code, "x-cdcs-trace-id": "trace-header"})


CLOSE = Answer(close=True)


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class StandIn:
    """A scripted HTTP/1.1 server on 127.0.0.1: each request takes the next answer (the last
    one is repeated when the script runs out)."""

    def __init__(self) -> None:
        self.script: list[Answer] = []
        self.seen: list[Seen] = []
        self.lock = threading.Lock()
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def handle_one(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with stand_in.lock:
                    stand_in.seen.append(Seen(self.command, self.path,
                                              {k.lower(): v for k, v in self.headers.items()},
                                              body))
                    answer = (stand_in.script.pop(0) if len(stand_in.script) > 1
                              else stand_in.script[0])
                if answer.close:
                    self.close_connection = True
                    return
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                if "Content-Length" not in answer.headers:
                    self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(answer.body)

            do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = handle_one

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,),
                                       daemon=True)
        self.thread.start()

    def answer(self, *answers: Answer) -> None:
        self.script = list(answers)

    @property
    def count(self) -> int:
        return len(self.seen)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def stand_in() -> Iterator[StandIn]:
    s = StandIn()
    yield s
    s.close()


@dataclass(frozen=True)
class Recording(RetryPolicy):
    """A RetryPolicy that notes every wait it is asked for."""

    waits: list[int] = field(default_factory=list, compare=False)

    def delay(self, attempt: int) -> float:
        self.waits.append(attempt)
        return super().delay(attempt)


def client_for(url: str, retry: RetryPolicy = FAST) -> Client:
    return Client(url, "AKIDstandin", "secret", retry=retry, timeout=10, connect_timeout=2)


# -- what is retried ----------------------------------------------------------------------------

@pytest.mark.parametrize("code", ["InternalError", "AlreadyLock", "DataSynchronization"])
def test_get_is_retried_after_a_retryable_code(stand_in, code):
    stand_in.answer(fail(code), fail(code), Answer(200, SERVICE_XML))
    policy = Recording(attempts=5, base=0.001, cap=0.01)
    with client_for(stand_in.url, policy) as c:
        listing = c.list_coffers()
    assert listing.coffers == []
    assert listing.owner.display_name == "1"
    assert stand_in.count == 3
    assert [s.method for s in stand_in.seen] == ["GET", "GET", "GET"]
    assert policy.waits == [0, 1]
    # each attempt is signed afresh
    assert all(s.headers["authorization"].startswith("q-sign-algorithm=sha1&q-ak=AKIDstandin&")
               for s in stand_in.seen)


def test_retries_give_up_after_attempts_and_raise_the_last_error(stand_in):
    stand_in.answer(fail("InternalError"))
    policy = Recording(attempts=4, base=0.001, cap=0.01)
    with client_for(stand_in.url, policy) as c, pytest.raises(errors.InternalError) as caught:
        c.list_coffers()
    assert stand_in.count == 4
    assert policy.waits == [0, 1, 2]
    err = caught.value
    assert isinstance(err, errors.ServerFailure)
    assert (err.code, err.status, err.message, err.request_id, err.trace_id, err.resource) == (
        "InternalError", 500, "m", "req-InternalError", "t", "c-1/k")
    assert str(err) == "InternalError: m (request req-InternalError)"


@pytest.mark.parametrize(("code", "cls"), [("NoSuchCoffer", errors.NotFound),
                                           ("AuthFailed", errors.AccessDenied),
                                           ("InvalidArgument", errors.InvalidRequest),
                                           ("CofferNotEmpty", errors.Conflict),
                                           ("MethodNotAllowed", errors.InvalidRequest)])
def test_other_codes_are_not_retried(stand_in, code, cls):
    stand_in.answer(fail(code), Answer(200, SERVICE_XML))
    with client_for(stand_in.url) as c, pytest.raises(errors.ServiceError) as caught:
        c.get_coffer("c-1250000000")
    assert stand_in.count == 1
    assert type(caught.value) is errors.BY_CODE[code]
    assert isinstance(caught.value, cls)


def test_streamed_get_object_is_retried(stand_in):
    stand_in.answer(fail("InternalError"), Answer(200, b"the bytes", OBJECT_HEADERS))
    with client_for(stand_in.url) as c, c.get_object("c-1250000000", "k") as reader:
        assert reader.read() == b"the bytes"
        assert reader.info.etag == "0123456789abcdef0123456789abcdef"
    assert stand_in.count == 2


def test_head_error_without_body_is_retried_by_its_header_code(stand_in):
    no_body = Answer(409, b"", {"x-cdcs-error-code": "AlreadyLock", "x-cdcs-request-id": "h",
                                "x-cdcs-trace-id": "ht"})
    stand_in.answer(no_body, Answer(200, b"", {**OBJECT_HEADERS, "Content-Length": "9"}))
    with client_for(stand_in.url) as c:
        assert c.head_object("c-1250000000", "k").etag == "0123456789abcdef0123456789abcdef"
    assert [s.method for s in stand_in.seen] == ["HEAD", "HEAD"]

    stand_in.seen.clear()
    stand_in.answer(no_body)
    with client_for(stand_in.url) as c, pytest.raises(errors.AlreadyLock) as caught:
        c.head_object("c-1250000000", "k")
    assert stand_in.count == 5
    err = caught.value
    assert (err.message, err.request_id, err.trace_id, err.resource) == (
        CODES["AlreadyLock"].message, "h", "ht", "c-1250000000/k")


def test_json_error_documents_are_understood(stand_in):
    doc = {"Code": "DataSynchronization", "Message": "later", "Resource": "c-1/k",
           "RequestId": "jr", "TraceId": "jt"}
    stand_in.answer(Answer(409, json.dumps(doc).encode(),
                           {"Content-Type": "application/json", "x-cdcs-request-id": "jr"}))
    with client_for(stand_in.url, RetryPolicy(attempts=2, base=0.001)) as c, \
            pytest.raises(errors.DataSynchronization) as caught:
        c.list_coffers()
    assert stand_in.count == 2
    err = caught.value
    assert (err.message, err.request_id, err.trace_id, err.resource) == (
        "later", "jr", "jt", "c-1/k")


# -- PutObject: retried only when the server said that nothing changed ---------------------------

def test_put_object_is_retried_after_internal_error(stand_in):
    ok = Answer(200, b"", {"ETag": f'"{hashlib.md5(b"payload").hexdigest()}"'})
    stand_in.answer(fail("InternalError"), ok)
    with client_for(stand_in.url) as c:
        result = c.put_object("c-1250000000", "k", b"payload")
    assert result.etag == hashlib.md5(b"payload").hexdigest()
    assert stand_in.count == 2
    assert [s.body for s in stand_in.seen] == [b"payload", b"payload"]
    md5_b64 = base64.b64encode(hashlib.md5(b"payload").digest()).decode()
    assert [s.headers["content-md5"] for s in stand_in.seen] == [md5_b64, md5_b64]
    assert all(s.method == "PUT" and s.path == "/c-1250000000/k" for s in stand_in.seen)


def test_put_object_from_a_callable_or_file_is_replayed(stand_in, tmp_path):
    ok = Answer(200, b"", {"ETag": '"e"'})
    stand_in.answer(fail("AlreadyLock"), fail("InternalError"), ok)
    calls = []

    def chunks() -> list[bytes]:
        calls.append(1)
        return [b"abc", b"def"]
    with client_for(stand_in.url) as c:
        assert c.put_object("c-1250000000", "k", chunks, length=6).etag == "e"
    assert len(calls) == 3
    assert [s.body for s in stand_in.seen] == [b"abcdef"] * 3

    stand_in.seen.clear()
    stand_in.answer(fail("InternalError"), ok)
    path = tmp_path / "f"
    path.write_bytes(b"xxHEADfile body")
    with client_for(stand_in.url) as c, open(path, "rb") as fh:
        fh.seek(6)
        c.put_object("c-1250000000", "k", fh)
    assert [s.body for s in stand_in.seen] == [b"file body", b"file body"]


def test_put_object_is_not_retried_when_the_connection_closes_unanswered(stand_in):
    """The request arrived; whether it was stored is unknown: never sent again."""
    stand_in.answer(CLOSE, Answer(200, b"", {"ETag": '"e"'}))
    with client_for(stand_in.url) as c, pytest.raises(errors.TransportError) as caught:
        c.put_object("c-1250000000", "k", b"payload")
    assert stand_in.count == 1
    assert stand_in.seen[0].body == b"payload"
    err = caught.value
    assert isinstance(err, errors.DataCofferError)
    assert not isinstance(err, errors.ServiceError)
    assert (err.code, err.status) == ("", 0)
    assert isinstance(err.__cause__, httpx.RemoteProtocolError)
    assert str(err).startswith("PUT /c-1250000000/k: RemoteProtocolError: ")


@pytest.mark.parametrize("call", ["create_coffer", "initiate", "complete"])
def test_other_non_idempotent_requests_are_not_retried_after_a_close(stand_in, call):
    stand_in.answer(CLOSE, Answer(200, b"{}"))
    with client_for(stand_in.url) as c, pytest.raises(errors.TransportError):
        if call == "create_coffer":
            c.create_coffer("c-1250000000", ["ap-tianjin"])
        elif call == "initiate":
            c.initiate_multipart_upload("c-1250000000", "k")
        else:
            c.complete_multipart_upload("c-1250000000", "k", "u", [])
    assert stand_in.count == 1


def test_a_body_that_can_be_sent_once_is_never_retried(stand_in):
    stand_in.answer(fail("InternalError"), Answer(200, b"", {"ETag": '"e"'}))
    with client_for(stand_in.url) as c, pytest.raises(errors.InternalError):
        c.put_object("c-1250000000", "k", iter([b"one", b"shot"]), length=7)
    assert stand_in.count == 1
    assert stand_in.seen[0].body == b"oneshot"


def test_upload_part_is_retried_after_a_close(stand_in):
    """Re-sending a part replaces it: UploadPart is idempotent."""
    stand_in.answer(CLOSE, Answer(200, b"", {"ETag": f'"{hashlib.md5(b"part").hexdigest()}"'}))
    with client_for(stand_in.url) as c:
        part = c.upload_part("c-1250000000", "k", "u", 3, b"part", length=4)
    assert part.etag == hashlib.md5(b"part").hexdigest()
    assert stand_in.count == 2
    assert [s.body for s in stand_in.seen] == [b"part", b"part"]


# -- idempotent requests after a close; connections that cannot be made ------------------------

def test_get_is_retried_when_the_connection_closes_unanswered(stand_in):
    stand_in.answer(CLOSE, CLOSE, Answer(200, SERVICE_XML))
    with client_for(stand_in.url) as c:
        assert c.list_coffers().coffers == []
    assert stand_in.count == 3


def test_get_gives_up_after_attempts_of_closed_connections(stand_in):
    stand_in.answer(CLOSE)
    with client_for(stand_in.url, RetryPolicy(attempts=3, base=0.001)) as c, \
            pytest.raises(errors.TransportError) as caught:
        c.list_coffers()
    assert stand_in.count == 3
    assert isinstance(caught.value.__cause__, httpx.RemoteProtocolError)


@pytest.mark.parametrize("method", ["GET", "PUT"])
def test_connection_refused_is_retried_then_raised(method):
    port = free_port()  # bound and released: nothing listens there
    policy = Recording(attempts=4, base=0.001, cap=0.01)
    c = client_for(f"http://127.0.0.1:{port}", policy)
    sent = []
    send = c._http.send

    def counting(request, **kw):
        sent.append(request.method)
        return send(request, **kw)
    c._http.send = counting
    with c, pytest.raises(errors.TransportError) as caught:
        if method == "GET":
            c.list_coffers()
        else:  # nothing left the machine: even a PutObject is safe to try again
            c.put_object("c-1250000000", "k", b"data")
    assert sent == [method] * 4
    assert policy.waits == [0, 1, 2]
    assert isinstance(caught.value.__cause__, httpx.ConnectError)
    assert str(caught.value).startswith(f"{method} /")


def test_attempts_1_never_retries(stand_in):
    never = RetryPolicy(attempts=1, base=0.001)
    stand_in.answer(fail("InternalError"), Answer(200, SERVICE_XML))
    with client_for(stand_in.url, never) as c, pytest.raises(errors.InternalError):
        c.list_coffers()
    assert stand_in.count == 1

    stand_in.seen.clear()
    stand_in.answer(CLOSE, Answer(200, SERVICE_XML))
    with client_for(stand_in.url, never) as c, pytest.raises(errors.TransportError):
        c.list_coffers()
    assert stand_in.count == 1

    c = client_for(f"http://127.0.0.1:{free_port()}", never)
    with c, pytest.raises(errors.TransportError):
        c.list_coffers()


# -- RetryPolicy alone --------------------------------------------------------------------------

def test_delay_is_full_jitter_within_the_cap():
    policy = RetryPolicy(attempts=10, base=0.2, cap=10.0)
    for attempt in range(12):
        bound = min(10.0, 0.2 * 2 ** attempt)
        samples = [policy.delay(attempt) for _ in range(300)]
        assert all(0 <= d <= bound for d in samples), attempt
        assert len(set(samples)) > 1  # jittered, not a constant
        assert max(samples) > bound / 2  # spread over the whole interval
    assert RetryPolicy().attempts == 5
    assert (RetryPolicy().base, RetryPolicy().cap) == (0.2, 10.0)
    tiny = RetryPolicy(base=0.001, cap=0.005)
    assert all(0 <= tiny.delay(a) <= min(0.005, 0.001 * 2 ** a) for a in range(20))


def test_should_retry():
    policy = RetryPolicy(attempts=3)
    request = httpx.Request("GET", "http://127.0.0.1/")
    internal = errors.from_response(500, "InternalError", "")
    missing = errors.from_response(404, "NoSuchCoffer", "")
    refused = httpx.ConnectError("refused", request=request)
    broken = httpx.RemoteProtocolError("closed", request=request)
    read_timeout = httpx.ReadTimeout("slow", request=request)
    for idempotent in (True, False):
        assert policy.should_retry(0, internal, idempotent=idempotent) is True
        assert policy.should_retry(1, internal, idempotent=idempotent) is True
        assert policy.should_retry(2, internal, idempotent=idempotent) is False  # 3rd attempt
        assert policy.should_retry(0, missing, idempotent=idempotent) is False
        assert policy.should_retry(0, refused, idempotent=idempotent) is True
        assert policy.should_retry(2, refused, idempotent=idempotent) is False
    assert policy.should_retry(0, broken, idempotent=True) is True
    assert policy.should_retry(0, broken, idempotent=False) is False
    assert policy.should_retry(0, read_timeout, idempotent=True) is True
    assert policy.should_retry(0, read_timeout, idempotent=False) is False
    assert RetryPolicy(attempts=1).should_retry(0, internal, idempotent=True) is False
    assert policy.should_retry(0, ValueError("not a transport error"), idempotent=True) is False
