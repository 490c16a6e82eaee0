"""The one path from a page request to a message: fetch, then render data or error."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Any

from bot.blockkit import Message
from bot.blocks import PageRef, build_error, build_loading, build_page
from bot.config import Settings
from bot.errors import KPSError
from bot.kps import KPSClient
from bot.listing import fetch_page
from bot.replies import Replies, ResponseType
from bot.services import view_context

log = logging.getLogger(__name__)

# How long a page may take before a Loading state is shown. Under a second keeps the user's
# flow (nothing seems broken); a fast KPS answers well within it, so its pages neither flicker
# nor spend one of the response_url's five posts on a placeholder.


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


async def send_page(
    replies: Replies,
    response_url: str,
    pending: Coroutine[Any, Any, Message],
    ref: PageRef,
    *,
    replace_original: bool,
    response_type: ResponseType,
    loading_after: float,
) -> None:
    """Send the page `pending` makes; when it is slow, a Loading state first, replaced in place."""
    fetch = asyncio.ensure_future(pending)
    try:
        done, _ = await asyncio.wait({fetch}, timeout=loading_after)
        if not done:
            loading = build_loading(ref)
            shown = await replies.send(
                response_url,
                loading,
                replace_original=replace_original,
                response_type=response_type,
            )
            # Once the placeholder is there, the page takes its place rather than follow it.
            replace_original = replace_original or shown
        message = await fetch
    finally:
        fetch.cancel()  # nothing when it finished; stops the KPS call if this one was cancelled
    await replies.send(
        response_url, message, replace_original=replace_original, response_type=response_type
    )
