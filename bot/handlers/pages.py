"""The one path from a page request to a message: fetch, then render data or error."""

from __future__ import annotations

import logging

from bot.blockkit import Message
from bot.blocks import PageRef, build_error, build_page
from bot.errors import KPSError
from bot.listing import fetch_page
from bot.services import Services

log = logging.getLogger(__name__)


async def page_message(
    services: Services, ref: PageRef, *, shared_by: str | None = None
) -> Message:
    """The page `ref` asks for, or a message saying in words why KPS could not give it."""
    try:
        listing = await fetch_page(services.kps, ref)
    except KPSError as error:
        log.warning("listing failed", extra={"why": str(error)})
        return build_error(error, ref=ref, action="list running tasks")
    return build_page(
        listing.tasks,
        total=listing.total,
        ref=listing.ref,
        ctx=services.view_context(),
        shared_by=shared_by,
    )
