"""GetService: the coffers of the caller's account."""

from __future__ import annotations

import anyio
from starlette.responses import Response

from datacoffer.core import access
from datacoffer.core.clock import iso8601
from datacoffer.core.coffers import Coffer
from datacoffer.http import xml
from datacoffer.http.call import Call


def owner_element(parent: xml.Element, tag: str, principal: str, uin: str) -> None:
    owner = xml.sub(parent, tag)
    xml.sub(owner, "ID", principal)
    xml.sub(owner, "DisplayName", uin)


def locations_element(parent: xml.Element, locations: tuple[str, ...]) -> None:
    node = xml.sub(parent, "Locations")
    for region in locations:
        xml.sub(node, "Location", region)


async def get_service(call: Call) -> Response:
    ident, context = call.identity, call.context()

    def visible() -> list[Coffer]:
        owned = call.inst.coffers.owned_by(ident.account_uin)
        return access.visible(ident, owned, context)

    root = xml.new("ListAllMyCoffersResult")
    owner_element(root, "Owner", ident.principal, ident.uin)
    coffers = xml.sub(root, "Coffers")
    for coffer in await anyio.to_thread.run_sync(visible):
        node = xml.sub(coffers, "Coffer")
        xml.sub(node, "Name", coffer.name)
        locations_element(node, coffer.locations)
        xml.sub(node, "CreationDate", iso8601(coffer.created_ms))
    return Response(xml.render(root), media_type="application/xml")
