"""Every CDCS error code, its HTTP status and its default message.

The domain core raises `CdcsError`; the HTTP layer renders it. Nothing here knows HTTP beyond
the status number that the wire contract fixes for each code.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ErrorCode:
    name: str
    status: int
    message: str


_TABLE: tuple[tuple[str, int, str], ...] = (
    ("InternalError", 500, "The server met an unexpected failure; nothing was changed. "
     "Retry later, and quote the TraceId if it persists."),
    ("MethodNotAllowed", 405, "The method is not allowed on this resource."),
    ("CofferNotFound", 404, "The specified coffer does not exist."),
    ("NoSuchCoffer", 404, "The specified coffer does not exist."),
    ("ObjectNotExists", 404, "The specified object does not exist."),
    ("NoSuchUpload", 404, "The specified multipart upload does not exist."),
    ("MultipartNotExists", 404, "A listed part was never uploaded to this upload."),
    ("EntityTooSmall", 400, "A part other than the last is smaller than 1 MiB."),
    ("InvalidPart", 400, "The part list is not numbered 1..N without a gap, or an ETag differs."),
    ("InvalidPartOrder", 400, "The parts are not listed in strictly ascending order."),
    ("InvalidArgument", 400, "The request is malformed."),
    ("InvalidCofferName", 400, "The coffer name is not valid."),
    ("InvalidObjectKey", 400, "The object key is not valid."),
    ("InvalidObjectPrefix", 400, "The prefix is not valid."),
    ("InvalidLifeCycle", 400, "The lifecycle configuration is not valid."),
    ("InvalidRange", 416, "The requested range starts beyond the end of the object."),
    ("CofferAlreadyExists", 409, "The coffer name is owned by another account."),
    ("CofferAlreadyOwnedByYou", 409, "Your account already owns this coffer."),
    ("CofferNotEmpty", 409, "The coffer is not empty."),
    ("MultipartAlreadyCompleted", 409, "The multipart upload has already been completed."),
    ("ObjectAlreadyUploading", 409, "Another upload to this key is in progress."),
    ("ObjectAlreadyExistsOwnedByYou", 409,
     "An object with this key already exists and was written by you; objects are immutable."),
    ("ObjectAlreadyExists", 409, "An object with this key already exists; objects are immutable."),
    ("AssumeRoleFailed", 409, "The service role has not been granted for this account's keys."),
    ("KMSFailed", 409, "The key management service refused or failed the request."),
    ("AuthFailed", 401, "The request signature could not be verified."),
    ("ObjectEmpty", 400, "An object cannot be empty."),
    ("DataSynchronization", 409,
     "The data has not yet been replicated to this region; retry later."),
    ("AlreadyLock", 409, "The resource is locked by a concurrent request; retry later."),
    ("PolicyCheckFailed", 401, "Access denied by the coffer's policy."),
    ("PolicyFormatCheckFailed", 409, "The policy document is not valid."),
    ("CofferCountExceedsLimit", 409, "Your account owns the maximum number of coffers."),
    ("ServiceNotOpen", 401, "The service is not open for this account."),
    ("ConsoleAuthFailed", 401, "Console sign-in failed or the session is no longer valid."),
    ("NoSuchLifecycleConfiguration", 404, "The coffer has no lifecycle configuration."),
)

CODES: dict[str, ErrorCode] = {name: ErrorCode(name, status, msg) for name, status, msg in _TABLE}


class CdcsError(Exception):
    """A refusal with a CDCS error code.

    `message` is shown to the client and must help a person without revealing the server's
    insides; `detail` goes only to the server log, under the error's TraceId.
    """

    def __init__(
        self, code: str, message: str | None = None, *, resource: str | None = None,
        detail: str | None = None, headers: dict[str, str] | None = None,
    ) -> None:
        self.code = CODES[code]
        self.message = message or self.code.message
        self.resource = resource
        self.detail = detail
        #: extra response headers (e.g. Content-Range on InvalidRange)
        self.headers = headers or {}
        super().__init__(f"{code}: {self.message}")

    @property
    def status(self) -> int:
        return self.code.status
