"""The exceptions the client raises: one class per CDCS error code, grouped by what a program
does about them.

`except errors.NoSuchCoffer` catches one code; `except errors.NotFound` every 404;
`except errors.DataCofferError` everything the client raises. Each code's class is made from the
server's own table (`datacoffer.errors`), so the two can never disagree.
"""

from __future__ import annotations

import functools

from datacoffer.errors import CODES


class DataCofferError(Exception):
    """Base of everything the client raises."""

    #: the CDCS error code ("" when the failure is not an answer of the server)
    code: str = ""
    #: the HTTP status (0 when no answer came)
    status: int = 0

    def __init__(self, message: str, *, request_id: str = "", trace_id: str = "",
                 resource: str = "", status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status  # as answered (the class holds the code's usual status)
        self.message = message
        self.request_id = request_id
        self.trace_id = trace_id
        self.resource = resource

    def __str__(self) -> str:
        text = f"{self.code}: {self.message}" if self.code else self.message
        return f"{text} (request {self.request_id})" if self.request_id else text


class ServiceError(DataCofferError):
    """The server answered with an error code."""


class AccessDenied(ServiceError):
    """The identity, its signature or its rights were refused (401)."""


class NotFound(ServiceError):
    """The coffer, object or upload does not exist (404)."""


class Conflict(ServiceError):
    """The request conflicts with the state of the resource (409): immutability, locks."""


class InvalidRequest(ServiceError):
    """The request itself is wrong (400, 405, 416)."""


class ServerFailure(ServiceError):
    """The server failed (5xx); it changed nothing."""


class TransportError(DataCofferError):
    """No usable answer: the connection failed, timed out or broke off."""


class ChecksumMismatch(DataCofferError):
    """Bytes read or written do not match the checksum the server reported."""


_BY_STATUS: dict[int, type[ServiceError]] = {
    401: AccessDenied, 404: NotFound, 409: Conflict, 500: ServerFailure,
}

#: every error code's class, by code
BY_CODE: dict[str, type[ServiceError]] = {
    name: type(name, (_BY_STATUS.get(spec.status, InvalidRequest),), {
        "code": name, "status": spec.status, "__doc__": spec.message, "__module__": __name__,
    })
    for name, spec in CODES.items()
}

#: codes that mean "nothing happened, try again": safe to retry for every request
RETRYABLE = frozenset({"DataSynchronization", "AlreadyLock", "InternalError"})


@functools.cache
def _unknown(code: str, status: int) -> type[ServiceError]:
    """A class for a code this client does not know (a newer server's, or a proxy's)."""
    base = ServerFailure if status >= 500 else _BY_STATUS.get(status, InvalidRequest)
    return type(code or f"HTTP{status}", (base,), {"code": code, "status": status,
                                                  "__doc__": ""})


def from_response(status: int, code: str, message: str, *, request_id: str = "",
                  trace_id: str = "", resource: str = "") -> ServiceError:
    """The exception for an error answer; an unknown code gets its status's class."""
    cls = BY_CODE.get(code) or _unknown(code, status)
    return cls(message or cls.__doc__ or f"HTTP {status}", request_id=request_id,
               trace_id=trace_id, resource=resource, status=status)


def __getattr__(name: str) -> type[ServiceError]:
    """`errors.NoSuchCoffer` and `from datacoffer.client.errors import NoSuchCoffer` (PEP 562);
    type checkers see each code's class as a `type[ServiceError]`."""
    try:
        return BY_CODE[name]
    except KeyError:
        raise AttributeError(name) from None


def __dir__() -> list[str]:
    return sorted([*globals(), *BY_CODE])
