"""What a handler gets: the request, its endpoint, the caller and the installation."""

from __future__ import annotations

import time
from dataclasses import dataclass

import anyio
from starlette.requests import Request

from datacoffer.core import access
from datacoffer.core.coffers import Coffer
from datacoffer.core.conditions import Context
from datacoffer.core.identities import Identity
from datacoffer.errors import CdcsError
from datacoffer.http import peer
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

    def context(self) -> Context:
        """What policy conditions look at: the client's address and the server's clock."""
        return Context(ip=peer.address(self.request, self.inst.settings.trusted_proxies,
                                       self.endpoint.resource), now=int(time.time()))

    async def coffer(self) -> Coffer:
        """The addressed coffer, checked to exist and to allow the caller this action."""
        context = self.context()
        return await anyio.to_thread.run_sync(self._allowed_coffer, context)

    def _allowed_coffer(self, context: Context) -> Coffer:
        coffer = self.inst.coffers.get(self.endpoint.coffer)
        if coffer is None:
            raise self.fail("CofferNotFound" if self.endpoint.object_level else "NoSuchCoffer")
        # Reads are served by the addressed region's copy; writes always land in the primary.
        addressed = self.endpoint.region if self.request.method in ("GET", "HEAD") else None
        region = addressed if addressed in coffer.locations else coffer.primary
        access.require(self.identity, self.endpoint.action, coffer, self.endpoint.key, region,
                       context)
        self.region = region  # (a refused caller is not told where the coffer lives)
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
