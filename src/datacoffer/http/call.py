"""What a handler gets: the request, its endpoint, the caller and the installation."""

from __future__ import annotations

from dataclasses import dataclass

import anyio
from starlette.requests import Request

from datacoffer.core import access
from datacoffer.core.coffers import Coffer
from datacoffer.core.identities import Identity
from datacoffer.errors import CdcsError
from datacoffer.http.router import Endpoint
from datacoffer.installation import Installation


@dataclass
class Call:
    request: Request
    endpoint: Endpoint
    identity: Identity
    inst: Installation
    #: the region that serves the request, once the coffer is known
    region: str | None = None

    def param(self, name: str, default: str = "") -> str:
        return self.endpoint.params.get(name, default)

    def fail(self, code: str, message: str | None = None) -> CdcsError:
        return CdcsError(code, message, resource=self.endpoint.resource)

    async def coffer(self) -> Coffer:
        """The addressed coffer, checked to exist and to allow the caller this action."""
        coffer = await anyio.to_thread.run_sync(self.inst.coffers.get, self.endpoint.coffer)
        if coffer is None:
            raise self.fail("CofferNotFound" if self.endpoint.object_level else "NoSuchCoffer")
        access.require(self.identity, self.endpoint.action, coffer, self.endpoint.resource)
        # Reads are served by the addressed region's copy; writes always land in the primary.
        addressed = self.endpoint.region if self.request.method in ("GET", "HEAD") else None
        self.region = addressed if addressed in coffer.locations else coffer.primary
        return coffer

    def int_param(self, names: tuple[str, ...], default: int, low: int, high: int, *,
                  message: str | None = None) -> int:
        """An integer query parameter (first of its aliases given), checked to lie in range
        (`message` says so when it does not)."""
        raw = next((self.endpoint.params[n] for n in names if n in self.endpoint.params), None)
        if raw is None:
            return default
        # (at most 9 digits before int(): Python refuses over 4,300, and none is in range)
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 9) or not low <= int(raw) <= high:
            raise self.fail("InvalidArgument", message or
                            f"{names[0]} must be a whole number from {low} to {high}.")
        return int(raw)

    def encoding_type(self) -> str:
        value = self.param("encoding-type")
        if value not in ("", "url"):
            raise self.fail("InvalidArgument", "encoding-type can only be 'url'.")
        return value
