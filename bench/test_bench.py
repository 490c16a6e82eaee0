"""Cheap checks of the benchmark's own parts: signing, bodies, percentiles, profile summaries."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs

from slack_sdk.signature import SignatureVerifier

from bench.load import BodyMaker, Signer, percentile
from bench.profile import summarise


def test_signer_signs_as_slack_does() -> None:
    body = BodyMaker("tasks web", "http://127.0.0.1:9/").body("m-1-1")
    headers = Signer("s3cret").headers(body)
    assert SignatureVerifier("s3cret").is_valid_request(body, headers)
    assert not SignatureVerifier("other").is_valid_request(body, headers)


def test_body_carries_the_text_and_its_own_response_url() -> None:
    form = parse_qs(BodyMaker("tasks web", "http://127.0.0.1:9").body("m-3-7"))
    assert form["command"] == ["/kps"]
    assert form["text"] == ["tasks web"]
    assert form["response_url"] == ["http://127.0.0.1:9/response/m-3-7"]


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None


def test_profile_summary_counts_own_and_inclusive_time(tmp_path: Path) -> None:
    raw = tmp_path / "p.raw"
    raw.write_text(
        "main (app.py:1);work (site-packages/httpx/_client.py:5) 3\n"
        "main (app.py:1);render (/work/main/bot/blocks.py:9) 1\n"
    )
    text = summarise(raw, top=5)
    assert "4 samples" in text
    assert "75.0%  work (httpx/_client.py:5)" in text
    assert "25.0%  render (bot/blocks.py:9)" in text
