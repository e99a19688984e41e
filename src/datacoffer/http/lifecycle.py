"""PutCofferLifecycle and GetCofferLifecycle (api.md 8-9).

The body is request syntax (a required, matching Content-MD5; InvalidLifeCycle), so it is
read and checked before the coffer's existence and the caller's rights, as errors.md orders
the checks; the write then takes the coffer's lifecycle lock.
"""

from __future__ import annotations

import hashlib

import anyio
from starlette.responses import Response

from datacoffer.core.lifecycle import document, parse_days
from datacoffer.http.body import read_limited
from datacoffer.http.call import Call
from datacoffer.http.objects import content_md5

MAX_LIFECYCLE_BODY = 64 * 1024


async def put_lifecycle(call: Call) -> Response:
    md5 = content_md5(call)
    if md5 is None:
        raise call.fail("InvalidArgument", "PutCofferLifecycle needs a Content-MD5 header "
                        "(the base64 of the body's MD5).")
    raw = await read_limited(call, MAX_LIFECYCLE_BODY)
    if hashlib.md5(raw).digest() != md5:
        raise call.fail("InvalidArgument", "Content-MD5 does not match the body received.")
    try:
        days = parse_days(raw)
    except ValueError as exc:
        raise call.fail("InvalidLifeCycle",
                        f"The lifecycle configuration is not valid: {exc}.") from None
    coffer = await call.coffer()
    await anyio.to_thread.run_sync(call.inst.lifecycles.put, coffer, days)
    return Response(b"")


async def get_lifecycle(call: Call) -> Response:
    coffer = await call.coffer()
    if coffer.lifecycle_days is None:
        raise call.fail("NoSuchLifecycleConfiguration",
                        "The coffer has no lifecycle rule: its objects never expire.")
    return Response(document(coffer.lifecycle_days), media_type="application/json")
