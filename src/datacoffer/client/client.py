"""`Client`: one method per operation of the CDCS API (api.md), signed, pooled and retried."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any
from xml.etree.ElementTree import Element, SubElement, tostring

import httpx

from datacoffer import signing
from datacoffer.client import credentials, errors, models, parse, transfer
from datacoffer.client.retry import RetryPolicy

#: A request body that can be sent again: bytes, or a function that makes the body's chunks
#: afresh for each attempt.
Body = bytes | Callable[[], Iterable[bytes]]
#: Reads of a file-like body (the transfers' chunk size).
CHUNK = transfer.CHUNK
#: operations whose repetition does no harm (retried even when their first effect is unknown)
IDEMPOTENT = frozenset({"GET", "HEAD"})


class ObjectReader:
    """A GetObject answer being received: `info` at once, the bytes as they arrive.

    Use it as a context manager, or call `close()`: it holds a pooled connection.
    """

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        try:
            self.info = parse.object_info(response.headers)
        except (KeyError, ValueError):
            response.close()
            raise errors.TransportError("the answer's object headers are malformed") from None
        self.status = response.status_code
        #: the number of body bytes the answer carries
        self.length = int(response.headers.get("content-length", "0"))
        #: (first, last) of the bytes in this answer, inclusive
        span = parse.content_range(response.headers)
        self.span = (span[0], span[1]) if span else (0, self.info.size - 1)

    def iter_bytes(self, chunk_size: int | None = None) -> Iterator[bytes]:
        """The body as it arrives (in pieces of `chunk_size` when given). The client asks for
        no content coding, so these are the object's bytes."""
        try:
            yield from self._response.iter_raw(chunk_size)
        except httpx.TransportError as exc:
            raise errors.TransportError(f"the download broke off: {exc}") from exc

    def read(self) -> bytes:
        return b"".join(self.iter_bytes())

    def close(self) -> None:
        self._response.close()

    def __enter__(self) -> ObjectReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def _file_body(fh: IO[bytes], length: int) -> Body:
    """A replayable body reading `length` bytes of a seekable file from where it stands now."""
    start = fh.tell()

    def chunks() -> Iterator[bytes]:
        fh.seek(start)
        left = length
        while left > 0:
            data = fh.read(min(CHUNK, left))
            if not data:
                raise errors.DataCofferError("the file is shorter than the length given")
            left -= len(data)
            yield data
    return chunks


class Client:
    """A connection to a Data Coffer server.

    Credentials come from the arguments, else `DATACOFFER_ENDPOINT`, `DATACOFFER_SECRET_ID`,
    `DATACOFFER_SECRET_KEY`, `DATACOFFER_SECURITY_TOKEN`, `DATACOFFER_REGION`, else the profile
    file that `datacoffer configure` writes (see `credentials`). The client is thread-safe:
    transfers share its connection pool across their worker threads.
    """

    def __init__(self, endpoint: str | None = None, secret_id: str | None = None,
                 secret_key: str | None = None, token: str | None = None,
                 region: str | None = None, *, profile: str | None = None,
                 timeout: float = 60.0, connect_timeout: float = 10.0,
                 max_connections: int = 32, retry: RetryPolicy | None = None,
                 verify: bool | str = True) -> None:
        self.profile = credentials.resolve(endpoint, secret_id, secret_key, token, region,
                                           profile=profile)
        self.retry = retry or RetryPolicy()
        base = httpx.URL(self.profile.endpoint)
        if base.scheme not in ("http", "https") or not base.host:
            raise credentials.CredentialsError(
                f"the endpoint must be an http:// or https:// URL, not {self.profile.endpoint!r}")
        netloc = base.netloc.decode("ascii")
        self._netloc = netloc
        self.host = self.region_host(self.profile.region)
        self.endpoint = f"{base.scheme}://{netloc}"
        self._http = httpx.Client(
            # waiting for a free pooled connection is not a failure: transfers queue for them
            timeout=httpx.Timeout(timeout, connect=connect_timeout, pool=None),
            limits=httpx.Limits(max_connections=max_connections,
                                max_keepalive_connections=max_connections),
            headers={"Accept-Encoding": "identity"}, verify=verify, follow_redirects=False)

    def region_host(self, region: str | None) -> str:
        """The Host header: `cdcs.<region>.<host>` addresses a region (api.md)."""
        return f"cdcs.{region}.{self._netloc}" if region else self._netloc

    def __repr__(self) -> str:
        return f"Client({self.endpoint!r}, secret_id={self.profile.secret_id!r})"

    # -- the one place where requests are made -----------------------------------------------

    def _target(self, coffer: str, key: str, params: dict[str, str]) -> tuple[str, str]:
        """(decoded path to sign, encoded path and query to send)."""
        path = "/" + coffer + ("/" + key if key else "")
        raw = "/" + signing.urlencode(coffer) + ("/" + signing.urlencode(key) if key else "")
        if params:
            raw += "?" + "&".join(
                signing.urlencode(n) + ("=" + signing.urlencode(v) if v else "")
                for n, v in params.items())
        return path, raw

    def request(self, method: str, coffer: str = "", key: str = "", *,
                params: dict[str, str] | None = None, headers: dict[str, str] | None = None,
                body: Body | None = None, once: Iterable[bytes] | None = None,
                idempotent: bool | None = None, stream: bool = False,
                retry: bool = True) -> httpx.Response:
        """Send one signed request, retrying as `RetryPolicy` allows (unless `retry` is
        false); raise the error class of an error answer. `once` is a body that can be sent
        only once (never retried)."""
        params = params or {}
        path, raw = self._target(coffer, key, params)
        idempotent = method in IDEMPOTENT if idempotent is None else idempotent
        attempt = 0
        while True:
            headers_now = {"Host": self.host, **(headers or {})}
            signed = {k.lower(): v for k, v in headers_now.items()
                      if k.lower() in ("host", "content-md5", "content-type")}
            fields = signing.sign(self.profile.secret_id, self.profile.secret_key, method, path,
                                  params, signed)
            headers_now["Authorization"] = signing.authorization_header(fields)
            if self.profile.token:
                headers_now["x-cdcs-security-token"] = self.profile.token
            content = body() if callable(body) else body if body is not None else once
            request = self._http.build_request(method, self.endpoint + raw,
                                               headers=headers_now, content=content)
            try:
                response = self._http.send(request, stream=stream)
                if response.status_code < 400:
                    return response
                raise self._failure(response, path[1:])
            except (errors.ServiceError, httpx.TransportError) as failure:
                if once is not None or not retry or not self.retry.should_retry(
                        attempt, failure, idempotent=idempotent):
                    if isinstance(failure, httpx.TransportError):
                        raise errors.TransportError(
                            f"{method} {path}: {type(failure).__name__}: {failure}") from failure
                    raise
            time.sleep(self.retry.delay(attempt))
            attempt += 1

    @staticmethod
    def _failure(response: httpx.Response, target: str) -> errors.ServiceError:
        body = response.read()
        response.close()
        code, message, trace, resource = parse.error(body, response.headers)
        return errors.from_response(
            response.status_code, code, message, trace_id=trace, resource=resource or target,
            request_id=response.headers.get("x-cdcs-request-id", ""))

    # -- coffers -----------------------------------------------------------------------------

    def list_coffers(self) -> models.ServiceListing:
        """GetService: the coffers of the caller's account, by name."""
        return parse.service(self.request("GET").content)

    def create_coffer(self, coffer: str, locations: list[str], *, encrypt_type: int = 0,
                      key_id: str | None = None, key_region: str | None = None) -> None:
        """PutCoffer. `coffer` is the full name, `<name>-<AppID>`."""
        doc: dict[str, Any] = {"Locations": {"Location": list(locations)}}
        if encrypt_type:
            doc["EncryptType"] = encrypt_type
        if key_id or key_region:
            doc.update(KeyId=key_id or "", KeyRegion=key_region or "")
        self.request("PUT", coffer, body=json.dumps(doc).encode(),
                     headers={"Content-Type": "application/json"}, idempotent=False)

    def get_coffer(self, coffer: str, *, prefix: str = "", delimiter: str = "",
                   marker: str = "", max_keys: int = 1000) -> models.CofferListing:
        """GetCoffer: the coffer's settings and one page of its objects."""
        params = {"encoding-type": "url", "max-keys": str(max_keys)}
        params.update({k: v for k, v in (("prefix", prefix), ("delimiter", delimiter),
                                          ("marker", marker)) if v})
        return parse.coffer(self.request("GET", coffer, params=params).content)

    def iter_coffer(self, coffer: str, *, prefix: str = "", delimiter: str = "",
                    page_size: int = 1000) -> Iterator[models.CofferListing]:
        """Every page of a listing, following NextMarker."""
        marker = ""
        while True:
            page = self.get_coffer(coffer, prefix=prefix, delimiter=delimiter, marker=marker,
                                   max_keys=page_size)
            yield page
            if not page.is_truncated:
                return
            marker = page.next_marker  # the server names it on every truncated page

    def list_objects(self, coffer: str, prefix: str = "", *,
                     page_size: int = 1000) -> Iterator[models.ObjectSummary]:
        """Every object whose key starts with `prefix`, in key order, page by page."""
        for page in self.iter_coffer(coffer, prefix=prefix, page_size=page_size):
            yield from page.objects

    def delete_coffer(self, coffer: str) -> None:
        """DeleteCoffer: only an empty coffer can go."""
        self.request("DELETE", coffer, idempotent=False)

    # -- policy and lifecycle ----------------------------------------------------------------

    def put_coffer_policy(self, coffer: str, policy: dict[str, Any] | str | bytes) -> None:
        """PutCofferPolicy: replace the coffer's policy (a JSON value, or its text as is).
        The owner's root only; a refused document raises PolicyFormatCheckFailed, whose
        message names the fault."""
        body = (policy if isinstance(policy, bytes) else
                (policy if isinstance(policy, str) else json.dumps(policy)).encode())
        self.request("PUT", coffer, params={"policy": ""}, body=body,
                     headers={"Content-Type": "application/json"}, idempotent=True)

    def get_coffer_policy(self, coffer: str) -> dict[str, Any]:
        """GetCofferPolicy: the canonical document; `{"Statement": [], "version": "2.0"}`
        when none is set."""
        return json.loads(self.request("GET", coffer, params={"policy": ""}).content)

    def delete_coffer_policy(self, coffer: str) -> None:
        """DeleteCofferPolicy: afterwards only the owner's root has rights on the coffer."""
        self.request("DELETE", coffer, params={"policy": ""}, idempotent=True)

    def put_coffer_lifecycle(self, coffer: str, days: int) -> None:
        """Objects expire `days` after their upload (the one rule a coffer has)."""
        data = json.dumps({"Rule": [{"Expiration": {"Days": days}}]}).encode()
        self.request("PUT", coffer, params={"lifecycle": ""}, body=data, idempotent=True,
                     headers={"Content-Type": "application/json",
                              "Content-MD5": _md5_b64(data)})

    def get_coffer_lifecycle(self, coffer: str) -> int:
        """The rule's `Days`; NoSuchLifecycleConfiguration when none is set."""
        doc = json.loads(self.request("GET", coffer, params={"lifecycle": ""}).content)
        return int(doc["Rule"][0]["Expiration"]["Days"])

    # -- objects -----------------------------------------------------------------------------

    def put_object(self, coffer: str, key: str,
                   data: bytes | IO[bytes] | Iterable[bytes] | Callable[[], Iterable[bytes]], *,
                   length: int | None = None, content_type: str | None = None,
                   content_md5: str | None = None) -> models.PutResult:
        """PutObject, streaming `data`: bytes, a binary file (from its current position), an
        iterator of bytes, or a function that makes the chunks afresh (retryable); give
        `length` for the last two. Bytes and seekable files are sent with a Content-MD5 (the
        file is read twice), so that bytes damaged on the way are refused rather than stored
        for good; the others only when `content_md5` is given."""
        headers = {"Content-Type": content_type or "application/octet-stream"}
        body: Body | None = None
        once: Iterable[bytes] | None = None
        if isinstance(data, bytes | bytearray | memoryview):
            body = bytes(data)
            length = len(body)
            content_md5 = content_md5 or _md5_b64(body)
        elif callable(data):
            body = data
        elif hasattr(data, "read") and _seekable(data):
            fh: IO[bytes] = data  # type: ignore[assignment]
            if length is None:
                start = fh.tell()
                length = fh.seek(0, os.SEEK_END) - start
                fh.seek(start)
            body = _file_body(fh, length)
            if content_md5 is None:
                md5 = hashlib.md5()
                for chunk in body():
                    md5.update(chunk)
                content_md5 = base64.b64encode(md5.digest()).decode()
        else:
            once = _read_chunks(data) if hasattr(data, "read") else data  # type: ignore[arg-type]
        if length is None:
            raise ValueError("put_object needs `length` unless `data` is bytes or a seekable file")
        headers["Content-Length"] = str(length)
        if content_md5:
            headers["Content-MD5"] = content_md5
        response = self.request("PUT", coffer, key, headers=headers, body=body, once=once,
                                idempotent=False)
        return models.PutResult(parse.unquote_etag(response.headers.get("etag", "")))

    def get_object(self, coffer: str, key: str, *, byte_range: tuple[int, int | None] | None
                   = None, part_number: int | None = None) -> ObjectReader:
        """GetObject, streamed. `byte_range` is (first, last) inclusive (last None: to the
        end); `part_number` asks for one part of a multipart object (docs/decisions.md)."""
        headers, params = {}, {}
        if byte_range is not None:
            first, last = byte_range
            headers["Range"] = f"bytes={first}-{'' if last is None else last}"
        if part_number is not None:
            params["partNumber"] = str(part_number)
        return ObjectReader(self.request("GET", coffer, key, params=params, headers=headers,
                                         stream=True))

    def head_object(self, coffer: str, key: str, *,
                    part_number: int | None = None) -> models.ObjectInfo:
        params = {"partNumber": str(part_number)} if part_number is not None else {}
        return parse.object_info(self.request("HEAD", coffer, key, params=params).headers)

    def object_regions(self, coffer: str, key: str) -> dict[str, bool]:
        """Which of the coffer's Locations hold a copy of the object yet: a HeadObject
        addressed to each region, whose DataSynchronization means "not yet" (not retried)."""
        held = {}
        for region in self.get_coffer(coffer, max_keys=1).locations:
            try:
                self.request("HEAD", coffer, key, retry=False,
                             headers={"Host": self.region_host(region)})
                held[region] = True
            except errors.DataSynchronization:
                held[region] = False
        return held

    # -- multipart uploads -------------------------------------------------------------------

    def initiate_multipart_upload(self, coffer: str, key: str, *,
                                  content_type: str | None = None) -> models.Upload:
        headers = {"Content-Type": content_type} if content_type else {}
        response = self.request("POST", coffer, key, params={"uploads": ""}, headers=headers,
                                idempotent=False)
        return parse.initiated(response.content)

    def upload_part(self, coffer: str, key: str, upload_id: str, number: int, data: Body, *,
                    length: int, content_md5: str | None = None) -> models.Part:
        """UploadPart. `data` is bytes or a function making the part's chunks (called again
        for a retry). Re-sending a part replaces it, so a part is always safe to retry."""
        headers = {"Content-Length": str(length)}
        if content_md5:
            headers["Content-MD5"] = content_md5
        elif isinstance(data, bytes):
            headers["Content-MD5"] = _md5_b64(data)
        response = self.request("PUT", coffer, key, params={"partNumber": str(number),
                                                           "uploadId": upload_id},
                                headers=headers, body=data, idempotent=True)
        return models.Part(number, parse.unquote_etag(response.headers.get("etag", "")), length)

    def list_parts(self, coffer: str, key: str, upload_id: str, *, marker: int = 0,
                   max_parts: int = 1000) -> models.PartListing:
        params = {"uploadId": upload_id, "max-parts": str(max_parts)}
        if marker:
            params["part-number-marker"] = str(marker)
        return parse.parts(self.request("GET", coffer, key, params=params).content)

    def iter_parts(self, coffer: str, key: str, upload_id: str, *,
                   page_size: int = 1000) -> Iterator[models.Part]:
        marker = 0
        while True:
            page = self.list_parts(coffer, key, upload_id, marker=marker, max_parts=page_size)
            yield from page.parts
            if not page.is_truncated:
                return
            marker = page.next_marker

    def complete_multipart_upload(self, coffer: str, key: str, upload_id: str,
                                  parts: Iterable[models.Part]) -> models.CompleteResult:
        root = Element("CompleteMultipartUpload")
        for part in sorted(parts, key=lambda p: p.number):
            el = SubElement(root, "Part")
            SubElement(el, "PartNumber").text = str(part.number)
            SubElement(el, "ETag").text = f'"{part.etag}"'
        data = tostring(root, encoding="utf-8")
        response = self.request("POST", coffer, key, params={"uploadId": upload_id},
                                body=data, headers={"Content-Type": "application/xml"},
                                idempotent=False)
        return parse.completed(response.content)

    def abort_multipart_upload(self, coffer: str, key: str, upload_id: str) -> None:
        # not repeated after a lost answer: a repeat of a done abort would say NoSuchUpload
        self.request("DELETE", coffer, key, params={"uploadId": upload_id}, idempotent=False)

    def list_multipart_uploads(self, coffer: str, *, prefix: str = "", key_marker: str = "",
                               upload_id_marker: str = "",
                               max_uploads: int = 1000) -> models.UploadListing:
        params = {"uploads": "", "encoding-type": "url", "max-uploads": str(max_uploads)}
        params.update({k: v for k, v in (("prefix", prefix), ("key-marker", key_marker),
                                          ("upload-id-marker", upload_id_marker)) if v})
        return parse.uploads(self.request("GET", coffer, params=params).content)

    def iter_uploads(self, coffer: str, prefix: str = "", *,
                     page_size: int = 1000) -> Iterator[models.Upload]:
        key_marker = upload_marker = ""
        while True:
            page = self.list_multipart_uploads(coffer, prefix=prefix, key_marker=key_marker,
                                               max_uploads=page_size,
                                               upload_id_marker=upload_marker)
            yield from page.uploads
            if not page.is_truncated:
                return
            key_marker, upload_marker = page.next_key_marker, page.next_upload_id_marker

    # -- presigned URLs and transfers --------------------------------------------------------

    def presign(self, method: str, coffer: str, key: str = "", *, expires: int = 3600,
                params: dict[str, str] | None = None) -> str:
        """A URL that performs this one request without credentials until it expires
        (`curl` can use it as it is). Only the Host header is signed: the host of the URL,
        which is what a client fetching it sends (a `region` cannot be carried by a URL on
        the endpoint's own host, so the request goes to the coffer's primary region)."""
        params = dict(params or {})
        path, raw = self._target(coffer, key, params)
        host = httpx.URL(self.endpoint).netloc.decode("ascii")
        fields = signing.sign(self.profile.secret_id, self.profile.secret_key, method.upper(),
                              path, params, {"host": host}, expires=expires)
        extra = dict(fields)
        if self.profile.token:
            extra["x-cdcs-security-token"] = self.profile.token
        query = "&".join(f"{n}={signing.urlencode(v)}" for n, v in extra.items())
        return f"{self.endpoint}{raw}{'&' if params else '?'}{query}"

    def upload_file(self, coffer: str, key: str, path: str | os.PathLike[str], *,
                    config: transfer.TransferConfig | None = None,
                    progress: transfer.Progress | None = None,
                    content_type: str | None = None,
                    cancel: threading.Event | None = None) -> models.TransferResult:
        """Store a local file, by PutObject or a parallel multipart upload, resumable and
        verified (see `transfer.upload_file`)."""
        return transfer.upload_file(self, coffer, key, Path(path), config=config,
                                    progress=progress, content_type=content_type,
                                    cancel=cancel)

    def download_file(self, coffer: str, key: str, path: str | os.PathLike[str], *,
                      config: transfer.TransferConfig | None = None,
                      progress: transfer.Progress | None = None,
                      cancel: threading.Event | None = None) -> models.TransferResult:
        """Fetch an object into a local file with parallel GETs, verified (see
        `transfer.download_file`)."""
        return transfer.download_file(self, coffer, key, Path(path), config=config,
                                      progress=progress, cancel=cancel)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _seekable(fh: Any) -> bool:
    try:
        return bool(fh.seekable())
    except (AttributeError, OSError, ValueError):
        return False


def _read_chunks(fh: IO[bytes]) -> Iterator[bytes]:
    while chunk := fh.read(CHUNK):
        yield chunk
