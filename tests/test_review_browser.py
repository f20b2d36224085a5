"""`sgid review` in a real browser: Playwright driving the system's chromium, headless, against a live server.

Needs chromium (Debian: `apt-get install chromium`; `.ci/run` installs it) and the playwright package; without
them the whole module is skipped with the reason in the test summary. Playwright's own browser download is not
used: the system binary is launched (``$SGID_CHROMIUM``, else ``chromium`` on the PATH or /usr/bin/chromium).
"""

from __future__ import annotations

import csv
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from review_support import HOSTILE, live_server, make_runs, plant_caption
from sgid.review.server import make_app, open_session
from sgid.review.study import StudySettings, export


def chromium_path() -> str | None:
    for candidate in (os.environ.get("SGID_CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium"):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


CHROMIUM = chromium_path()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="browser tests skipped: no chromium found (apt-get install chromium, or set SGID_CHROMIUM)"
)
sync_api = pytest.importorskip("playwright.sync_api", reason="browser tests skipped: playwright is not installed")

# Without the background-networking flags chromium's own connections are refused here and it stalls.
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with sync_api.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> list[Path]:
    made = make_runs(tmp_path_factory.mktemp("browser-runs"), cache_dir)
    plant_caption(made[0])
    return made


@pytest.fixture
def server(runs: list[Path], tmp_path: Path) -> Iterator[tuple[str, object]]:
    session = open_session(runs, db=tmp_path / "review.sqlite", cache_dir=tmp_path / "cache")
    with live_server(make_app(session, token=None, allowed_hosts=("127.0.0.1",))) as url:
        yield url, session


def new_page(browser, url: str):  # type: ignore[no-untyped-def]
    # bypass_csp: the app's Content-Security-Policy would also stop injected script; without it, the escaping
    # test shows that escaping alone keeps a hostile caption inert (and Playwright's waits may evaluate code)
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, bypass_csp=True)
    page = context.new_page()
    page.on("dialog", lambda dialog: pytest.fail(f"a dialog opened: {dialog.message}"))
    page.goto(url)
    return page


def save_name(page, name: str) -> None:  # type: ignore[no-untyped-def]
    page.fill("#name-input", name)
    page.click("#name-form button")
    sync_api.expect(page.locator("#name-status")).to_have_text(f"reviewing as {name}")


def test_gallery_opens_pages_filters_and_screenshots(browser, server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    url, session = server
    page = new_page(browser, url + "/gallery?per=3")
    assert page.title() == "sgid review: gallery"
    assert page.locator("section.group").count() == 3 and page.locator("figure.card").count() == 18
    # every thumbnail loaded (naturalWidth > 0)
    page.wait_for_function("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
    shot = tmp_path / "gallery.png"
    page.screenshot(path=str(shot), full_page=True)
    picture = np.asarray(Image.open(shot).convert("RGB"))
    assert picture.shape[0] > 600 and picture.shape[1] >= 1400
    colours = (picture[..., 0].astype(np.uint32) << 16) | (picture[..., 1].astype(np.uint32) << 8) | picture[..., 2]
    assert len(np.unique(colours)) > 1000  # thumbnails, text, colours: not a blank page
    assert shot.stat().st_size > 50_000
    # page: the link, then the keyboard (n)
    first_sources = page.locator("section.group").evaluate_all("s => s.map(x => x.dataset.source)")
    page.click("#next-page")
    page.wait_for_url("**page=2**")
    assert page.locator("section.group").evaluate_all("s => s.map(x => x.dataset.source)") != first_sources
    page.keyboard.press("n")
    page.wait_for_url("**page=3**")
    assert page.locator("section.group").count() == 2
    page.keyboard.press("p")
    page.wait_for_url("**page=2**")
    # filter by class and method with the form
    page.select_option("select[name=label]", "fox")
    page.select_option("select[name=method]", "cutmix")
    page.click("#filters button[type=submit]")
    page.wait_for_url("**label=fox**")
    cards = page.locator("figure.card")
    assert cards.count() == 4
    assert all("fox/" in text for text in cards.locator(".file").all_inner_texts())


def test_accept_reject_best_persist_after_reload(browser, server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    url, session = server
    page = new_page(browser, url + "/gallery?method=randaugment&per=2")
    save_name(page, "alice")
    cards = page.locator("figure.card")
    cards.nth(0).locator("button[data-action=reject]").click()
    sync_api.expect(cards.nth(0)).to_have_class("card state-rejected mine-reject")
    cards.nth(1).locator("button[data-action=accept]").click()
    sync_api.expect(cards.nth(1)).to_have_class("card state-accepted mine-accept")
    # keyboard: on the third card, best of its original (b): its sibling (the fourth) is passed over
    cards.nth(2).focus()
    page.keyboard.press("b")
    sync_api.expect(cards.nth(2)).to_have_class("card state-accepted mine-best")
    sync_api.expect(cards.nth(3)).to_have_class("card state-rejected mine-passed")
    page.keyboard.press("j")
    page.keyboard.press("a")  # the last click wins: alice keeps this one too
    sync_api.expect(cards.nth(3)).to_have_class("card state-accepted mine-accept")
    page.keyboard.press("b")  # now this one is her best: the other is passed over
    sync_api.expect(cards.nth(2)).to_have_class("card state-rejected mine-passed")
    page.reload()
    cards = page.locator("figure.card")
    sync_api.expect(cards.nth(0)).to_have_class("card state-rejected mine-reject")
    sync_api.expect(cards.nth(1)).to_have_class("card state-accepted mine-accept")
    sync_api.expect(cards.nth(2)).to_have_class("card state-rejected mine-passed")
    sync_api.expect(cards.nth(3)).to_have_class("card state-accepted mine-best")
    assert "alice" in cards.nth(0).locator("[data-role=status]").inner_text()
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(tmp_path / "gallery-decisions.png"))  # docs/review-gallery.png is a copy of one
    # undo (u) clears alice's reject
    cards.nth(0).focus()
    page.keyboard.press("u")
    sync_api.expect(cards.nth(0)).to_have_class("card state-unreviewed")
    assert sorted(d.decision for d in session.db.decisions()) == ["accept", "accept"]
    assert [p.file_name for p in session.db.picks()] == [session.catalog.items[3].file_name]


def test_hostile_caption_is_shown_as_text(browser, server) -> None:  # type: ignore[no-untyped-def]
    url, _ = server
    page = new_page(browser, url + "/gallery?method=randaugment&per=1")
    caption = page.locator("[data-role=caption]").first
    assert caption.inner_text() == HOSTILE
    assert page.evaluate("window.__pwned") is None
    assert page.locator("img[src=x]").count() == 0 and page.locator("main script").count() == 0


def test_traversal_and_writes_without_csrf_are_refused(browser, server) -> None:  # type: ignore[no-untyped-def]
    url, session = server
    page = new_page(browser, url + "/gallery")
    save_name(page, "mallory")
    for path in ("/image/..%2F..%2F..%2Fetc%2Fpasswd", "/static/..%2Fdb.py", "/thumb/%2e%2e%2fsecret", "/image/99999"):
        response = page.request.get(url + path)
        assert response.status == 404, path
    response = page.goto(url + "/image/../../../../etc/passwd")
    assert response is not None and response.status == 404
    page.goto(url + "/gallery")
    status = page.evaluate(
        """async () => (await fetch('/api/decision', {method: 'POST', headers: {'Content-Type': 'application/json'},
            body: JSON.stringify({item: 0, decision: 'reject'})})).status"""
    )
    assert status == 403
    forged = page.evaluate(
        """async () => (await fetch('/api/decision', {method: 'POST', headers: {'Content-Type': 'application/json',
            'X-CSRF-Token': 'f'.repeat(64)}, body: JSON.stringify({item: 0, decision: 'reject'})})).status"""
    )
    assert forged == 403 and session.db.decisions() == []


def test_two_annotators_run_a_study_and_export_it(browser, runs: list[Path], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    session = open_session(
        runs, db=tmp_path / "study.sqlite", cache_dir=tmp_path / "cache", study=StudySettings(2, 2, seed=5)
    )
    assert session.study is not None
    items = len(session.db.study_items(session.study.id))
    assert items == 4
    with live_server(make_app(session, token=None, allowed_hosts=("127.0.0.1",))) as url:
        for annotator, offset in (("ann", 0), ("bob", 1)):
            page = new_page(browser, url + "/")
            page.wait_for_url("**/study")
            page.fill("#annotator-input", annotator)
            page.click("#annotator-form button")
            page.wait_for_url("**/study/1")
            for number in range(1, items + 1):
                assert page.locator(".study-image").count() == 3
                body = page.content()
                assert not any(m in body for m in ("randaugment", "random_erasing", "cutmix"))  # blinded
                for position in range(3):
                    for s, scale in enumerate(("consistency", "diversity")):
                        value = (number + position + s * 2 + offset * (position == 0)) % 5 + 1
                        page.check(f"input[name=r-{position}-{scale}][value='{value}']")
                sync_api.expect(page.locator("#rated-count")).to_have_text("6 of 6 ratings given")
                page.click("#next-item")
                page.wait_for_url(f"**/study{'' if number == items else f'/{number + 1}'}")
            sync_api.expect(page.locator("#done")).to_have_text(f"Thank you, {annotator}")
            page.context.close()
    paths = export(session.db, session.study, tmp_path / "ratings")
    rows = list(csv.DictReader(paths[0].open()))
    assert len(rows) == 2 * items * 3 * 2 and {r["annotator"] for r in rows} == {"ann", "bob"}
    assert {r["method"] for r in rows} == {"randaugment", "random_erasing", "cutmix"}
    report = paths[2].read_text()
    assert "| randaugment |" in report and "semantic consistency: " in report
    alpha_line = next(line for line in report.splitlines() if line.startswith("- diversity: "))
    alpha = float(alpha_line.split(": ")[1])
    assert -1.0 <= alpha <= 1.0 and alpha < 1.0  # bob differs from ann on position 0
