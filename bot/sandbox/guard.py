"""What the sandbox's admin and playground routes demand: a local Host, and JSON on a POST.

These routes have no login: anything that reaches them can inject faults, read every call the
bot made, or act as the demo user. Two things keep a web page the developer happens to visit out:

- A page on another site can POST to loopback without asking (a "simple" request: a form, or
  fetch with `text/plain`), but it cannot send `Content-Type: application/json` without a CORS
  preflight, which these servers never grant. So a POST must carry JSON. PUT and DELETE always
  need a preflight, so they need no such check.
- DNS rebinding points a name the page's own site owns at 127.0.0.1; the browser then treats the
  local server as that site and lets the page read the answers. The request still carries the
  site's name in `Host`, so only requests addressed to a loopback name, or to the very address
  they arrived on (the machine's own IP when the demo listens beyond loopback), are answered.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Final

from aiohttp import hdrs, web

LOOPBACK_NAMES: Final = frozenset({"127.0.0.1", "localhost", "::1"})

_Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def host_name(header: str | None) -> str | None:
    """The name in a `Host` header, lowercased, without port or IPv6 brackets; None if malformed."""
    if not header:
        return None
    value = header.strip().lower()
    if value.startswith("["):
        name, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return None
        port = rest[1:]
    elif value.count(":") > 1:
        return None  # an IPv6 address must come in brackets
    else:
        name, _, port = value.partition(":")
    if port and not port.isdigit():
        return None
    return name or None


def is_loopback_bind(host: str) -> bool:
    """True when listening on `host` keeps a server to this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # "" and "0.0.0.0" style wildcards, or a name that may resolve anywhere


def addressed_locally(request: web.Request) -> bool:
    """True when the request's `Host` is a loopback name or the address it arrived on."""
    name = host_name(request.headers.get(hdrs.HOST))
    if name is None:
        return False
    if name in LOOPBACK_NAMES:
        return True
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    if not sockname:
        return False
    try:
        return _plain(ipaddress.ip_address(name)) == _plain(ipaddress.ip_address(sockname[0]))
    except ValueError:
        return False  # a name that is not an IP: what a rebinding page sends


def _plain(address: _Address) -> _Address:
    # On a dual-stack listener an IPv4 client arrives as ::ffff:a.b.c.d.
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped if mapped is not None else address


def refusal(request: web.Request) -> web.Response | None:
    """The 403 or 415 answer `request` gets, or None when it may go on."""
    if not addressed_locally(request):
        host = request.headers.get(hdrs.HOST, "")[:100]
        text = (
            f"this server answers only requests addressed to 127.0.0.1, localhost or [::1] "
            f"(or the address it listens on), not Host {host!r}"
        )
        return web.json_response({"ok": False, "error": text}, status=403)
    if request.method == hdrs.METH_POST and request.content_type != "application/json":
        text = "send the body as JSON, with Content-Type: application/json"
        return web.json_response({"ok": False, "error": text}, status=415)
    return None


def guarded(handler: Handler) -> Handler:
    """`handler`, answering only requests that pass `refusal`."""

    @wraps(handler)
    async def checked(request: web.Request) -> web.StreamResponse:
        refused = refusal(request)
        if refused is not None:
            return refused
        return await handler(request)

    return checked
