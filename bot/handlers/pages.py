"""The one path from a page request to a message: fetch, then render data or error."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from bot.blockkit import Message
from bot.blocks import PageRef, build_error, build_page
from bot.config import Settings
from bot.errors import KPSError
from bot.kps import KPSClient
from bot.listing import fetch_page
from bot.services import view_context

log = logging.getLogger(__name__)


async def page_message(
    kps: KPSClient,
    settings: Settings,
    clock: Callable[[], datetime],
    ref: PageRef,
    *,
    shared_by: str | None = None,
) -> Message:
    """The page `ref` asks for, or a message saying in words why KPS could not give it."""
    try:
        listing = await fetch_page(kps, ref)
    except KPSError as error:
        log.warning("listing failed", extra={"why": str(error)})
        return build_error(error, ref=ref, action="list running tasks")
    return build_page(
        listing.tasks,
        total=listing.total,
        ref=listing.ref,
        ctx=view_context(settings, clock()),
        shared_by=shared_by,
        rejected=listing.rejected,
    )
