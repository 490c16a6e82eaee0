"""The playground in a real browser: headless Chromium drives the demo the way a person would."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import aiohttp
import pytest
from slack_sdk.web.async_client import AsyncWebClient

from bot.sandbox.demo import Demo, DemoOptions
from bot.sandbox.simulator import SimTask
from tests.browser import chromium_path, open_page, screenshot

# Playwright's expect() waits up to this long for what a person would wait to see.
SEEN = 10_000


@pytest.fixture
async def demo() -> AsyncIterator[Demo]:
    """The whole demo on free ports, its watcher scanning every second."""
    chromium_path()  # skip (or fail under REQUIRE_BROWSER=1) before starting anything
    options = DemoOptions(port=0, bot_port=0, sim_port=0, seed=6, poll_interval=1.0)
    async with Demo(options) as running:
        yield running


def newest(demo: Demo) -> SimTask:
    """The most recently started running task: far from stale."""
    return max(demo.sim.running(), key=lambda t: t.task_time_ms or 0)


async def test_kps_shows_ten_tasks_and_next_shows_the_next_ten(demo: Demo) -> None:
    from playwright.async_api import expect

    running = demo.sim.running()
    async with open_page(demo.url) as page:
        await page.fill("#composer-input", "/kps")
        await page.press("#composer-input", "Enter")

        reply = page.locator("#messages .msg.ephemeral")
        await expect(reply).to_contain_text(f"Showing 1–10 of {len(running)}", timeout=SEEN)
        tasks = reply.locator(".blk-context-item").filter(has_text=re.compile(r"^Task "))
        await expect(tasks).to_have_count(10)
        for task in running[:10]:
            await expect(reply).to_contain_text(task.task_id)
        await screenshot(page, "kps-first-page")

        await page.get_by_role("button", name="Next →").click()
        await expect(reply).to_contain_text(f"Showing 11–20 of {len(running)}", timeout=SEEN)
        await expect(reply).to_have_count(1)  # the page was replaced, not posted again
        await expect(tasks).to_have_count(10)
        for task in running[10:20]:
            await expect(reply).to_contain_text(task.task_id)
        await expect(reply).not_to_contain_text(running[0].task_id)
        await screenshot(page, "kps-second-page")


async def test_aging_a_task_brings_a_stale_notice(demo: Demo) -> None:
    from playwright.async_api import expect

    task = newest(demo)
    async with open_page(demo.url) as page:
        await page.get_by_role("button", name="# kps-alerts").click()
        await page.select_option("#task-select", task.task_id)
        await page.get_by_role("button", name="Age past 30 min").click()

        notice = page.locator("#messages .msg", has_text=task.task_id)
        await expect(notice).to_be_visible(timeout=SEEN)
        await expect(notice).to_contain_text(task.server_name)
        await expect(notice).not_to_have_class(re.compile("ephemeral"))
        await screenshot(page, "stale-notice")


async def test_finishing_an_announced_task_replies_in_the_notice_thread(demo: Demo) -> None:
    from playwright.async_api import expect

    task = newest(demo)
    async with open_page(demo.url) as page:
        await page.get_by_role("button", name="# kps-alerts").click()
        await page.select_option("#task-select", task.task_id)
        await page.get_by_role("button", name="Age past 30 min").click()
        notice = page.locator("#messages .msg", has_text=task.task_id)
        await expect(notice).to_be_visible(timeout=SEEN)

        await page.select_option("#task-select", task.task_id)
        await page.get_by_role("button", name="Finish: success").click()
        replies = notice.get_by_role("button", name=re.compile(r"^\d+ repl"))
        await expect(replies).to_be_visible(timeout=SEEN)
        await replies.click()

        thread = page.locator("#thread-messages .msg")
        await expect(thread.nth(1)).to_be_visible()
        said = re.compile(f"{re.escape(task.server_name)}|{re.escape(task.task_id)}")
        await expect(thread.nth(1)).to_contain_text(said)
        await screenshot(page, "notice-thread")


async def test_a_notice_can_be_acknowledged_and_snoozed(demo: Demo) -> None:
    from playwright.async_api import expect

    async with open_page(demo.url) as page:
        await page.get_by_role("button", name="# kps-alerts").click()
        # The seeded stale tasks are announced at the watcher's first scan.
        acknowledge = page.get_by_role("button", name="Acknowledge")
        notice = page.locator("#messages .msg", has=acknowledge).first
        await expect(notice).to_be_visible(timeout=SEEN)
        notice_id = await notice.get_attribute("data-id")
        same = page.locator(f'#messages .msg[data-id="{notice_id}"]')

        await same.get_by_role("button", name="Acknowledge").click()
        await expect(same).to_contain_text("Acknowledged by @demo", timeout=SEEN)
        await expect(same.get_by_role("button", name="Acknowledge")).to_have_count(0)
        await same.get_by_role("button", name="Snooze 4 h").click()
        await expect(same).to_contain_text("Reminders snoozed by @demo until", timeout=SEEN)
        await expect(same).to_contain_text("(edited)")
        await screenshot(page, "notice-acknowledged")


async def test_home_tab_and_its_list_button(demo: Demo) -> None:
    from playwright.async_api import expect

    listed = len(demo.sim.running())
    # Home counts the demo's queued (READY_x) task apart from the running ones.
    running = sum(1 for t in demo.sim.running() if not t.status.startswith("READY"))
    async with open_page(demo.url) as page:
        await page.get_by_role("button", name="kps-bot", exact=True).click()
        home = page.locator("#messages .home")
        await expect(home).to_contain_text("Key-pair tasks", timeout=SEEN)
        await expect(home).to_contain_text(f"{running} key-pair tasks are running")
        await screenshot(page, "home-tab")

        await home.get_by_role("button", name="List running tasks").click()
        await page.get_by_role("button", name="Messages").click()
        await expect(page.locator("#messages .msg")).to_contain_text(
            f"Showing 1–10 of {listed}", timeout=SEEN
        )


async def test_text_from_kps_is_shown_as_text_never_as_html(demo: Demo) -> None:
    from playwright.async_api import expect

    name = '<img src=x onerror="document.title=1"> & <!channel>'
    demo.sim.add_task(server_name=name, keypair_name="kp-<b>x</b>")
    async with open_page(demo.url) as page:
        await page.fill("#composer-input", "/kps tasks onerror")
        await page.press("#composer-input", "Enter")
        reply = page.locator("#messages .msg.ephemeral")
        await expect(reply).to_contain_text(
            'Showing the only task matching "onerror"', timeout=SEEN
        )
        await expect(reply).to_contain_text(name.strip())
        await expect(reply).to_contain_text("kp-<b>x</b>")
        assert await page.locator("#messages img").count() == 0
        assert await reply.locator(".mk-mention").count() == 0  # <!channel> pinged nobody
        assert await page.title() == "kps-bot playground"


async def test_renderer_formats_mrkdwn_with_dom_nodes(demo: Demo) -> None:
    async with open_page(demo.url) as page:
        await page.wait_for_function("window.KpsRender !== undefined")
        shown = await page.evaluate(
            """() => {
              const box = document.createElement('div');
              KpsRender.appendMrkdwn(box,
                '*bold* _italic_ ~gone~ `a*b*c` <https://example.com/x?a=1&amp;b=2|a &amp; b> ' +
                '&lt;script&gt;x&lt;/script&gt; &amp;lt; <javascript:alert(1)|bad> 2*3*4 ' +
                '<!date^0^{date_num}|1970-01-01 00:00 UTC> <!date^1^{nope}|the fallback> ' +
                ':warning:');
              const unknown = KpsRender.renderBlocks([{type: 'image', image_url: 'x'}]);
              return {
                html: box.innerHTML,
                text: box.textContent,
                bold: box.querySelector('b').textContent,
                italic: box.querySelector('i').textContent,
                strike: box.querySelector('s').textContent,
                code: box.querySelector('code').textContent,
                links: [...box.querySelectorAll('a')].map(a => [a.href, a.textContent]),
                dates: [...box.querySelectorAll('time')].map(t => t.textContent),
                scripts: box.querySelectorAll('script').length,
                unknown: unknown.textContent,
              };
            }"""
        )
    assert (shown["bold"], shown["italic"], shown["strike"]) == ("bold", "italic", "gone")
    assert shown["code"] == "a*b*c"  # no formatting inside code
    assert shown["links"] == [["https://example.com/x?a=1&b=2", "a & b"]]
    assert "<script>x</script>" in shown["text"]
    assert shown["scripts"] == 0
    assert "&lt; " in shown["text"]  # "&amp;lt;" is decoded once, to the characters "&lt;"
    assert "bad" in shown["text"]  # a javascript: link is shown as text, not made a link
    assert "2*3*4" in shown["text"]
    assert len(shown["dates"]) == 2
    assert re.fullmatch(r"19(69|70)-\d\d-\d\d", shown["dates"][0])  # local date of epoch 0
    assert shown["dates"][1] == "the fallback"  # an unknown token falls back
    assert "\u26a0" in shown["text"]
    assert "Not shown by the playground: block image" in shown["unknown"]


async def test_what_the_bot_posts_renders_live_and_its_buttons_work(demo: Demo) -> None:
    """A notice as the watcher sends it (postMessage, a thread reply, chat.update) shows live."""
    from playwright.async_api import expect

    section = {"type": "section", "text": {"type": "mrkdwn", "text": "*1 task* is stale"}}
    next_button = {
        "type": "button",
        "text": {"type": "plain_text", "text": "Next →"},
        "action_id": "kps_page_next",
        "value": '{"v":1,"o":10,"n":10}',
    }
    async with open_page(demo.url) as page, aiohttp.ClientSession() as session:
        bot = AsyncWebClient(
            token=demo.slack.bot_token, base_url=demo.slack.api_url, session=session
        )
        await page.get_by_role("button", name="# kps-alerts").click()
        await expect(page.locator("#connection.live")).to_be_attached(timeout=SEEN)

        posted = await bot.chat_postMessage(channel="C0ALERTS", text="stale", blocks=[section])
        notice = page.locator("#messages .msg", has_text="1 task is stale")
        await expect(notice).to_be_visible(timeout=SEEN)
        await expect(notice.locator("b")).to_have_text("1 task")

        await bot.chat_postMessage(
            channel="C0ALERTS", thread_ts=posted["ts"], text="`web-prod-01` finished"
        )
        await bot.chat_update(channel="C0ALERTS", ts=posted["ts"], text="stale", blocks=[section])
        await expect(notice).to_contain_text("(edited)", timeout=SEEN)
        await notice.get_by_role("button", name="1 reply").click()
        await expect(page.locator("#thread-messages")).to_contain_text("web-prod-01 finished")

        # A button on a channel message reaches the bot as a signed block_actions payload, and
        # its replace_original answer replaces that message.
        holder = {"type": "section", "text": {"type": "mrkdwn", "text": "page holder"}}
        actions = {"type": "actions", "elements": [next_button]}
        await bot.chat_postMessage(channel="C0ALERTS", text="page", blocks=[holder, actions])
        paging = page.locator("#messages .msg", has_text="page holder")
        message_id = await paging.get_attribute("data-id")
        await paging.get_by_role("button", name="Next →").click()
        replaced = page.locator(f'#messages .msg[data-id="{message_id}"]')
        await expect(replaced).to_contain_text("Showing 11–20 of", timeout=SEEN)
        await screenshot(page, "live-notice")


async def test_emoji_render_in_colour_not_as_empty_boxes(demo: Demo) -> None:
    """✅ ❌ ⏳ 💤 (what the bot's messages carry) drawn in the page's font come out in colour.

    Without a colour emoji font (CI's Chromium needs fonts-noto-color-emoji) they are drawn as an
    empty box or a black outline: no coloured pixel at all.
    """
    async with open_page(demo.url) as page:
        await page.wait_for_function("window.KpsRender !== undefined")
        drawn = await page.evaluate(
            """(glyphs) => {
              const family = getComputedStyle(document.body).fontFamily;
              return glyphs.map((glyph) => {
                const canvas = document.createElement('canvas');
                canvas.width = canvas.height = 64;
                const ctx = canvas.getContext('2d');
                ctx.font = `40px ${family}`;
                ctx.textBaseline = 'top';
                ctx.fillStyle = '#000';
                ctx.fillText(glyph, 8, 8);
                const data = ctx.getImageData(0, 0, 64, 64).data;
                let coloured = 0;
                for (let i = 0; i < data.length; i += 4) {
                  const [r, g, b, a] = data.slice(i, i + 4);
                  if (a > 128 && Math.max(r, g, b) - Math.min(r, g, b) > 60) coloured += 1;
                }
                return {glyph, coloured, width: ctx.measureText(glyph).width};
              });
            }""",
            ["\u2705", "\u274c", "\u23f3", "\U0001f4a4"],
        )
    for shown in drawn:
        assert shown["width"] > 0, shown
        assert shown["coloured"] > 50, f"{shown['glyph']} has no colour: no emoji font? {shown}"


async def test_running_task_picker_labels_are_unique_and_name_the_operation(demo: Demo) -> None:
    from playwright.async_api import expect

    started = newest(demo).task_time_ms
    # One server with two tasks of the same kind started together, and with one of another kind.
    for operation in ("RUNNING_RESET", "RUNNING_RESET", "RUNNING_UNBIND"):
        demo.sim.add_task(
            server_name="web-prod-01",
            operate_type=operation,
            status=operation,
            task_time_ms=started,
        )
    running = demo.sim.running()
    async with open_page(demo.url) as page:
        options = page.locator("#task-select option")
        await expect(options).to_have_count(len(running), timeout=SEEN)
        labels = await options.all_inner_texts()
    assert len(set(labels)) == len(labels), [x for x in labels if labels.count(x) > 1]
    twins = [label for label in labels if label.startswith("web-prod-01 · ")]
    assert len(twins) == 3
    assert sum("· reset ·" in label for label in twins) == 2
    assert sum("· unbind ·" in label for label in twins) == 1
    queued = [t for t in running if t.status.startswith("READY_")]
    assert sum("(queued)" in label for label in labels) == len(queued) > 0
