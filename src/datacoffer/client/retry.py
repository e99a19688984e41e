"""When a failed request may be sent again, and how long to wait first."""

from __future__ import annotations

import random
from dataclasses import dataclass

import httpx

from datacoffer.client.errors import RETRYABLE, DataCofferError

#: transport failures that happen before any byte of the request left: nothing was done
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


@dataclass(frozen=True)
class RetryPolicy:
    """Retry what is known to have changed nothing, or what is safe to repeat.

    - An answer with a retryable code (DataSynchronization, AlreadyLock, InternalError) changed
      nothing (errors.md): retried for every request.
    - A connection that could not be made, or a proxy's 503 without a CDCS code: retried for
      every request (a proxy's 502 or 504 only for idempotent requests).
    - A connection that broke after the request was sent leaves its effect unknown: retried only
      for idempotent requests (GET, HEAD, UploadPart, …), never for PutObject, PutCoffer,
      InitiateMultipartUpload or CompleteMultipartUpload.

    Waits are "full jitter" exponential back-off: uniform in [0, min(cap, base * 2**attempt)].
    """

    attempts: int = 5
    base: float = 0.2
    cap: float = 10.0

    def delay(self, attempt: int) -> float:
        return random.uniform(0, min(self.cap, self.base * 2 ** attempt))

    def should_retry(self, attempt: int, failure: BaseException, *, idempotent: bool) -> bool:
        if attempt + 1 >= self.attempts:
            return False
        if isinstance(failure, DataCofferError) and failure.code:
            return failure.code in RETRYABLE
        if isinstance(failure, DataCofferError) and failure.status:
            # an answer without a CDCS code: a proxy's. 503 means "not now"; after a 502 or a
            # 504 the server may have acted, so only what is safe to repeat goes again
            return failure.status == 503 or (idempotent and failure.status in (502, 504))
        if isinstance(failure, NOT_SENT):
            return True
        return idempotent and isinstance(failure, httpx.TransportError)
