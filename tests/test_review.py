"""`sgid review` through its HTTP interface (Starlette's test client and a live server), its database, the
`human` filter, the study's sample and export, and Krippendorff's alpha. The browser tests are in
test_review_browser.py."""

from __future__ import annotations

import json
import os
import re
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("httpx")

from review_support import BASE, METHODS, csrf_of, live_server, make_runs, plant_caption
from sgid.cli import main
from sgid.errors import SgidError
from sgid.review.db import Rating, ReviewDB
from sgid.review.server import access, bind, make_app, open_session
from sgid.review.study import StudySettings, krippendorff_alpha, sample


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> list[Path]:
    root = tmp_path_factory.mktemp("review-runs")
    made = make_runs(root, cache_dir)
    plant_caption(made[0])
    return made


def client(session, token=None, hosts=("127.0.0.1", "localhost", "::1")):  # type: ignore[no-untyped-def]
    from starlette.testclient import TestClient

    return TestClient(make_app(session, token=token, allowed_hosts=hosts), base_url=BASE)


def opened(runs: list[Path], tmp_path: Path, **options):  # type: ignore[no-untyped-def]
    return open_session(runs, db=tmp_path / "review.sqlite", cache_dir=tmp_path / "cache", **options)


def signed_in(c, name: str = "alice") -> str:  # type: ignore[no-untyped-def]
    """Open the gallery (session cookie), save a name; the page's CSRF token."""
    csrf = csrf_of(c.get("/gallery").text)
    assert c.post("/api/name", json={"name": name}, headers={"X-CSRF-Token": csrf}).status_code == 200
    return csrf


def item_ids(session, method: str) -> list[int]:  # type: ignore[no-untyped-def]
    return [i.id for i in session.catalog.items if i.method == method]


def filter_human(run: Path, db: Path, out: Path) -> int:
    """`sgid filter RUN --filters human --review-db DB --out OUT`: its exit code."""
    return main(["filter", str(run), "--filters", "human", "--review-db", str(db), "--out", str(out), "-q"])


# -- the gallery -----------------------------------------------------------------------------------------------
def test_gallery_shows_every_original_beside_its_augmentations(runs: list[Path], tmp_path: Path) -> None:
    session = opened(runs, tmp_path)
    page = client(session).get("/gallery?per=200").text
    assert len(session.catalog.items) == 3 * 8 * 2 and len(session.catalog.originals) == 8
    for item in session.catalog.items:
        assert f'data-item="{item.id}"' in page and item.file_name in page
    sections = re.findall(r'<section class="group" data-source="([^"]+)"', page)
    assert sections == sorted(o.source for o in session.catalog.originals)
    first = page.split('<section class="group"')[1]
    assert all(f"<b>method</b> {m}" in first for m in METHODS)  # one original, every run's augmentations
    assert "perturbation_params" in page and "partner" in page  # method-specific provenance is shown


def test_gallery_of_a_tiny_model_run_with_a_filter_output(augmented_run: Path, tmp_path: Path) -> None:
    """An sgid run (tiny models): caption, prompt, s*, g, noise and seed on the card; with --filters DIR, the
    filter's decision and reason (here from a human filter made from this very review)."""
    session = open_session([augmented_run], db=tmp_path / "review.sqlite", cache_dir=tmp_path / "cache")
    c = client(session)
    csrf = signed_in(c, "ann")
    rows = [json.loads(line) for line in (augmented_run / "metadata.jsonl").read_text().splitlines()]
    page = c.get("/gallery?per=200").text
    for row in rows:
        card = page.split(f'data-item="{session.catalog.item(session.catalog.runs[0].identity, row["file_name"]).id}"')[
            1
        ]
        card = card.split("</figure>")[0]
        assert f"<b>seed</b> {row['seed']}" in card and f"<b>s*</b> {row['similarity']:.3f}" in card
        assert f"<b>g</b> {row['guidance_scale']:.3f}" in card and f"<b>noise</b> {row['noise_rate']:.2f}" in card
        caption = row["caption"].replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&#34;")
        assert caption.replace("'", "&#39;") in card
    c.post("/api/decision", json={"item": 0, "decision": "reject"}, headers={"X-CSRF-Token": csrf})
    out = tmp_path / "filtered"
    assert filter_human(augmented_run, tmp_path / "review.sqlite", out) == 0
    shown = open_session([augmented_run], db=tmp_path / "review.sqlite", cache_dir=tmp_path / "cache", filters=[out])
    with_filter = client(shown)
    rejected = with_filter.get("/gallery?decision=filter_reject&per=200").text
    assert rejected.count('class="card') == 1 and "<b>sgid filter</b> reject: human: rejected by ann" in rejected
    assert with_filter.get("/gallery?decision=filter_keep&per=200").text.count('class="card') == len(rows) - 1
    with pytest.raises(SgidError, match="not an sgid filter output"):
        open_session([augmented_run], db=tmp_path / "r2.sqlite", filters=[tmp_path])


def test_gallery_filters_sorts_and_pages(runs: list[Path], tmp_path: Path) -> None:
    session = opened(runs, tmp_path)
    c = client(session)
    only_dogs = c.get("/gallery?label=dog&per=200").text
    assert re.findall(r'data-source="([^"]+)"', only_dogs) == ["dog/0.png", "dog/1.png", "dog/2.png"]
    cutmix = c.get("/gallery?method=cutmix&per=200").text
    assert cutmix.count('class="card') == 16 and "<b>method</b> randaugment" not in cutmix
    pages = [c.get(f"/gallery?per=3&page={n}").text for n in (1, 2, 3)]
    shown = [re.findall(r'data-source="([^"]+)"', p) for p in pages]
    assert [len(s) for s in shown] == [3, 3, 2] and len({s for page in shown for s in page}) == 8
    assert "page 3 of 3" in pages[2] and 'id="next-page"' not in pages[2]
    assert c.get("/gallery?per=3&page=99").status_code == 200  # clamps to the last page
    for bad in ("per=0", "page=-1", "smin=abc", "sort=evil", "decision=maybe", "smax=nan"):
        response = c.get(f"/gallery?{bad}")
        assert response.status_code == 400 and 'id="error-message"' in response.text


def test_similarity_range_and_sort(runs: list[Path], tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "scored"
    shutil.copytree(runs[1], run)
    rows = [json.loads(line) for line in (run / "metadata.jsonl").read_text().splitlines()]
    for n, row in enumerate(rows):
        row["similarity"] = round(0.1 + 0.05 * n, 4)  # 0.10 ... 0.85
    (run / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    c = client(open_session([run], db=tmp_path / "r.sqlite", cache_dir=tmp_path / "cache"))

    def shown(query: str) -> list[float]:
        return [float(v) for v in re.findall(r"<b>s\*</b> ([0-9.]+)", c.get(f"/gallery?{query}&per=200").text)]

    assert sorted(shown("smin=0.4&smax=0.6")) == [0.4, 0.45, 0.5, 0.55, 0.6]
    assert shown("smin=0.8") == [0.8, 0.85]
    high_first = shown("sort=-similarity")
    firsts = high_first[::2]  # two augmentations per original: the best of each group leads, groups by it
    assert firsts == sorted(firsts, reverse=True) and high_first[0] == 0.85
    assert shown("sort=similarity")[0] == 0.1


def test_decisions_and_best_of_k_persist(runs: list[Path], tmp_path: Path) -> None:
    session = opened(runs, tmp_path)
    c = client(session)
    csrf = signed_in(c)
    ra = item_ids(session, "randaugment")
    assert c.post(
        "/api/decision", json={"item": ra[0], "decision": "reject"}, headers={"X-CSRF-Token": csrf}
    ).is_success
    assert c.post(
        "/api/decision", json={"item": ra[2], "decision": "accept"}, headers={"X-CSRF-Token": csrf}
    ).is_success
    best = c.post("/api/best", json={"item": ra[3]}, headers={"X-CSRF-Token": csrf}).json()["items"]
    # ra[2] and ra[3] augment the same original: picking ra[3] passes ra[2] over
    assert best[str(ra[3])]["mine"] == "best" and best[str(ra[2])]["state"] == "rejected"
    assert "alice picked" in best[str(ra[2])]["reason"]
    # a fresh server over the same database shows the same
    again = client(opened(runs, tmp_path))
    page = again.get("/gallery?method=randaugment&decision=rejected&per=200").text
    assert f'data-item="{ra[0]}"' in page and f'data-item="{ra[2]}"' in page and f'data-item="{ra[3]}"' not in page
    assert f'data-item="{ra[3]}"' in again.get("/gallery?decision=best&per=200").text
    # clearing
    assert c.post("/api/decision", json={"item": ra[0], "decision": None}, headers={"X-CSRF-Token": csrf}).is_success
    assert c.post("/api/best", json={"item": ra[3], "clear": True}, headers={"X-CSRF-Token": csrf}).is_success
    db = ReviewDB(tmp_path / "review.sqlite")
    assert [(d.file_name, d.decision) for d in db.decisions()] == [(session.catalog.items[ra[2]].file_name, "accept")]
    assert db.picks() == [] and db.event_count() == 5


def test_writes_need_a_name_and_valid_input(runs: list[Path], tmp_path: Path) -> None:
    c = client(opened(runs, tmp_path))
    csrf = csrf_of(c.get("/gallery").text)
    headers = {"X-CSRF-Token": csrf}
    no_name = c.post("/api/decision", json={"item": 0, "decision": "reject"}, headers=headers)
    assert no_name.status_code == 400 and "name" in no_name.json()["error"]
    assert c.post("/api/name", json={"name": "x" * 65}, headers=headers).status_code == 400
    assert c.post("/api/name", json={"name": "bad\x00name"}, headers=headers).status_code == 400
    signed_in(c)
    for body in (
        {"item": 10**6, "decision": "reject"},
        {"item": "0", "decision": "reject"},
        {"item": True, "decision": "reject"},
        {"item": 0, "decision": "meh"},
    ):
        assert c.post("/api/decision", json=body, headers=headers).status_code == 400
    assert c.post("/api/decision", content=b"not json", headers=headers).status_code == 400


# -- thumbnails ------------------------------------------------------------------------------------------------
def test_thumbnails_are_made_once(runs: list[Path], tmp_path: Path) -> None:
    session = opened(runs, tmp_path)
    c = client(session)
    urls = re.findall(r'src="(/(?:original-)?thumb/\d+)"', c.get("/gallery?per=2").text)
    assert len(urls) == 2 * (1 + 6)
    for url in urls:
        response = c.get(url)
        assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    assert session.thumbnails.made == len(urls)
    fresh = opened(runs, tmp_path)  # a new server process finds them on disk
    c2 = client(fresh)
    for url in urls:
        c2.get(url)
    assert fresh.thumbnails.made == 0
    changed = fresh.catalog.items[0]
    os.utime(changed.path, ns=(1, 1))  # an image changed on disk gets a new thumbnail
    c2.get("/thumb/0")
    assert fresh.thumbnails.made == 1


def test_an_unreadable_image_gets_a_clear_answer(runs: list[Path], tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "broken"
    shutil.copytree(runs[0], run)
    first = json.loads((run / "metadata.jsonl").read_text().splitlines()[0])["file_name"]
    (run / first).write_bytes(b"not an image")
    c = client(open_session([run], db=tmp_path / "r.sqlite", cache_dir=tmp_path / "cache"))
    response = c.get("/thumb/0")
    assert response.status_code == 415 and "unreadable image" in response.text
    assert c.get("/thumb/1").status_code == 200 and c.get("/gallery").status_code == 200


def test_a_10000_image_run_pages_without_touching_the_rest(tmp_path: Path, cache_dir: Path) -> None:
    """A synthetic 10,000-image manifest (hard links to one image): a page and its thumbnails cost only the
    page's images. (Timings: benchmarks/bench_review.py.)"""
    from conftest import noise_image

    run = tmp_path / "big"
    (run / "c").mkdir(parents=True)
    noise_image(0, (64, 48)).save(run / "c" / "master.png")
    rows = []
    for n in range(10_000):
        name = f"c/{n:05d}.png"
        os.link(run / "c" / "master.png", run / name)
        rows.append(
            {
                "file_name": name,
                "label": f"class{n // 4 % 10}",
                "source": f"class{n // 4 % 10}/{n // 4}.png",
                "k": n % 4,
                "method": "sgid",
                "similarity": (n % 100) / 100,
                "caption": f"caption {n}",
            }
        )
    (run / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "run.json").write_text(json.dumps({"config": {"method": "sgid"}}))
    session = open_session([run], db=tmp_path / "r.sqlite", cache_dir=tmp_path / "cache")
    assert len(session.catalog.items) == 10_000 and len(session.catalog.groups) == 2_500
    c = client(session)
    page = c.get("/gallery?page=100&sort=-similarity").text
    thumbs = re.findall(r'src="(/thumb/\d+)"', page)
    assert len(thumbs) == 12 * 4 and "page 100 of 209" in page
    for url in thumbs:
        assert c.get(url).status_code == 200
    assert session.thumbnails.made == 48
    c.get("/gallery?page=100&sort=-similarity")
    for url in thumbs:
        c.get(url)
    assert session.thumbnails.made == 48  # nothing regenerated


# -- security --------------------------------------------------------------------------------------------------
def test_only_files_of_the_runs_are_served(runs: list[Path], tmp_path: Path) -> None:
    c = client(opened(runs, tmp_path))
    for url in (
        "/image/../../../../etc/passwd",
        "/image/..%2F..%2F..%2Fetc%2Fpasswd",
        "/thumb/%2e%2e/%2e%2e/etc/passwd",
        "/static/../app.py",
        "/static/..%2Fapp.py",
        "/static/%2e%2e/db.py",
        "/original/../../input/cat/0.png",
        "/image/-1",
        "/image/100000",
        "/original/100000",
        "/study/1/image/0",
    ):
        response = c.get(url)
        assert response.status_code == 404, url
        assert b"root:" not in response.content and b"def " not in response.content
    assert c.get("/static/review.js").status_code == 200


def test_a_symlink_out_of_the_run_is_refused(tmp_path: Path, cache_dir: Path) -> None:
    from conftest import noise_image

    [run] = make_runs(tmp_path / "one", cache_dir, {"cat": 2}, multiplier=1)[:1]
    secret = tmp_path / "secret.png"
    noise_image(7).save(secret)
    rows = [json.loads(line) for line in (run / "metadata.jsonl").read_text().splitlines()]
    target = run / rows[0]["file_name"]
    target.unlink()
    target.symlink_to(secret)  # listed in the manifest, but resolves outside the run
    session = open_session([run], db=tmp_path / "r.sqlite", cache_dir=tmp_path / "cache")
    c = client(session)
    escaped = next(i.id for i in session.catalog.items if i.file_name == rows[0]["file_name"])
    assert c.get(f"/image/{escaped}").status_code == 404 and c.get(f"/thumb/{escaped}").status_code == 404
    other = next(i.id for i in session.catalog.items if i.file_name != rows[0]["file_name"])
    assert c.get(f"/image/{other}").status_code == 200


def test_captions_are_escaped(runs: list[Path], tmp_path: Path) -> None:
    page = client(opened(runs, tmp_path)).get("/gallery?method=randaugment").text
    assert "<script>window.__pwned" not in page and "<img src=x" not in page
    assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;&lt;img src=x onerror=&#34;" in page
    assert "&amp;amp; &#34;quotes&#34;" in page


def test_writes_need_the_csrf_token(runs: list[Path], tmp_path: Path) -> None:
    session = opened(runs, tmp_path)
    c = client(session)
    csrf = signed_in(c)
    body = {"item": 0, "decision": "reject"}
    assert c.post("/api/decision", json=body).status_code == 403
    assert c.post("/api/decision", json=body, headers={"X-CSRF-Token": "0" * 64}).status_code == 403
    other = client(session)  # another browser's token does not fit this session
    assert (
        c.post("/api/decision", json=body, headers={"X-CSRF-Token": csrf_of(other.get("/gallery").text)}).status_code
        == 403
    )
    cross = c.post("/api/decision", json=body, headers={"X-CSRF-Token": csrf, "Origin": "http://evil.example"})
    assert cross.status_code == 403
    assert session.db.decisions() == []
    assert c.post("/api/decision", json=body, headers={"X-CSRF-Token": csrf, "Origin": BASE}).status_code == 200


def test_host_header_and_security_headers(runs: list[Path], tmp_path: Path) -> None:
    c = client(opened(runs, tmp_path))
    assert c.get("/gallery", headers={"Host": "evil.example:8765"}).status_code == 400  # DNS rebinding
    response = c.get("/gallery")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert response.headers["x-content-type-options"] == "nosniff" and response.headers["cache-control"] == "no-store"
    assert "HttpOnly" in response.headers["set-cookie"] and "SameSite=strict" in response.headers["set-cookie"]


def test_the_token_is_needed_on_every_request(runs: list[Path], tmp_path: Path) -> None:
    c = client(opened(runs, tmp_path), token="s3cret-token", hosts=None)
    for url in ("/gallery", "/thumb/0", "/static/review.js", "/study"):
        assert c.get(url).status_code == 401, url
    assert c.get("/gallery?token=wrong").status_code == 401
    first = c.get("/gallery?token=s3cret-token")
    assert first.status_code == 200 and "sgid_token=s3cret-token" in first.headers["set-cookie"]
    assert c.get("/thumb/0").status_code == 200  # the cookie carries it from now on
    fresh = client(opened(runs, tmp_path), token="s3cret-token", hosts=None)
    assert fresh.get("/gallery", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
    # a public bind always has a token: the given one, or a generated one
    assert access("0.0.0.0", "given") == ("given", None)
    token, hosts = access("0.0.0.0", None)
    assert token and len(token) >= 24 and hosts is None
    assert access("127.0.0.1", None) == (None, ("127.0.0.1", "localhost", "::1", "127.0.0.1"))


def both_at_once(url: str, page: str, work) -> list[str]:  # type: ignore[no-untyped-def]
    """Two browsers (ann, bob), each with its session and CSRF token, running ``work(client, csrf, offset)`` at
    the same time against a live server; the failed requests' texts."""
    import httpx

    errors: list[str] = []

    def one(name: str, offset: int) -> None:
        with httpx.Client(base_url=url) as c:
            csrf = csrf_of(c.get(page).text)
            c.post("/api/name", json={"name": name}, headers={"X-CSRF-Token": csrf})
            for response in work(c, csrf, offset):
                if response.status_code != 200:
                    errors.append(response.text)

    threads = [threading.Thread(target=one, args=(name, offset)) for name, offset in (("ann", 0), ("bob", 2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_two_annotators_rating_at_once_lose_nothing(runs: list[Path], tmp_path: Path) -> None:
    session = opened(runs, tmp_path, study=StudySettings(labels=3, originals=2, seed=1))
    study = session.study
    assert study is not None
    cells = [
        (item, position, scale)
        for item, _, _ in session.db.study_items(study.id)
        for position in range(3)
        for scale in ("consistency", "diversity")
    ]

    def rate(c, csrf, offset):  # type: ignore[no-untyped-def]
        for n, (item, position, scale) in enumerate(cells):
            body = {"item": item, "position": position, "scale": scale, "value": (n + offset) % 5 + 1}
            yield c.post("/api/rating", json=body, headers={"X-CSRF-Token": csrf})

    with live_server(make_app(session, token=None, allowed_hosts=("127.0.0.1",))) as url:
        assert both_at_once(url, "/study", rate) == []
    ratings = session.db.ratings(study.id)
    assert len(ratings) == 2 * len(cells) == 2 * 6 * 3 * 2
    assert {r.annotator for r in ratings} == {"ann", "bob"}
    assert session.db.event_count() == 2 * len(cells) + 1  # every write logged (+ the study's creation)


def test_two_reviewers_selecting_at_once_lose_nothing(runs: list[Path], tmp_path: Path) -> None:
    session = opened(runs, tmp_path)
    count = len(session.catalog.items)

    def select(c, csrf, offset):  # type: ignore[no-untyped-def]
        for n in range(count):  # every image, by both, at once
            body = {"item": n, "decision": "reject" if (n + offset) % 3 else "accept"}
            yield c.post("/api/decision", json=body, headers={"X-CSRF-Token": csrf})

    with live_server(make_app(session, token=None, allowed_hosts=("127.0.0.1",))) as url:
        assert both_at_once(url, "/gallery", select) == []
    decisions = session.db.decisions()
    assert len(decisions) == 2 * count and session.db.event_count() == 2 * count


def test_a_study_server_shows_no_gallery(runs: list[Path], tmp_path: Path) -> None:
    """The gallery names methods: a server running a blinded study does not serve it, nor images by number."""
    c = client(opened(runs, tmp_path, study=StudySettings(labels=1, originals=1)))
    for url in ("/gallery", "/thumb/0", "/image/0", "/original/0", "/original-thumb/0"):
        assert c.get(url).status_code == 404, url
    assert c.get("/", follow_redirects=False).headers["location"] == "/study"
    assert 'href="/gallery"' not in c.get("/study").text
    gallery = client(opened(runs, tmp_path / "g"))
    assert gallery.get("/study").status_code == 404 and 'href="/study"' not in gallery.get("/gallery").text


# -- the human filter ------------------------------------------------------------------------------------------
def test_filter_human_consumes_the_selections(
    runs: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_clip(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("the human filter chose a CLIP model")

    monkeypatch.setattr("sgid.filters.api.open_run_clip", no_clip)
    session = opened(runs, tmp_path)
    c = client(session)
    csrf = signed_in(c, "Alice Z")
    ra = [i for i in session.catalog.items if i.method == "randaugment"]
    c.post("/api/decision", json={"item": ra[0].id, "decision": "reject"}, headers={"X-CSRF-Token": csrf})
    c.post("/api/best", json={"item": ra[3].id}, headers={"X-CSRF-Token": csrf})  # passes ra[2] over
    c.post("/api/decision", json={"item": ra[5].id, "decision": "accept"}, headers={"X-CSRF-Token": csrf})
    out = tmp_path / "kept"
    assert filter_human(runs[0], tmp_path / "review.sqlite", out) == 0
    decisions = {row["file_name"]: row for row in map(json.loads, (out / "decisions.jsonl").read_text().splitlines())}
    assert decisions[ra[0].file_name]["decision"] == "reject"
    assert decisions[ra[0].file_name]["reason"] == "human: rejected by Alice Z"
    assert decisions[ra[2].file_name]["reason"].startswith("human: rejected by Alice Z (best of K: Alice Z picked")
    assert decisions[ra[3].file_name]["decision"] == decisions[ra[5].file_name]["decision"] == "keep"
    assert decisions[ra[4].file_name]["decision"] == "keep"  # unreviewed images are kept
    kept = [json.loads(line)["file_name"] for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert len(kept) == len(ra) - 2 and ra[0].file_name not in kept and (out / ra[3].file_name).is_file()
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["filters"] == ["human"] and report["settings"]["scorer"] is None


def test_filter_human_errors(runs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["filter", str(runs[1]), "--filters", "human", "--out", str(tmp_path / "o"), "-q"]
    assert main(base) == 2 and "--review-db" in capsys.readouterr().err
    assert main([*base, "--review-db", str(tmp_path / "missing.sqlite")]) == 2
    assert "not found" in capsys.readouterr().err
    (tmp_path / "junk.sqlite").write_text("not a database")
    assert main([*base, "--review-db", str(tmp_path / "junk.sqlite")]) == 2
    assert "not an sgid review database" in capsys.readouterr().err
    opened(runs, tmp_path)  # a database that knows the runs but holds no decision for runs[1]
    assert main([*base, "--review-db", str(tmp_path / "review.sqlite")]) == 2
    err = capsys.readouterr().err
    assert "holds no review decisions" in err and err.count("\n") == 1


# -- the study -------------------------------------------------------------------------------------------------
def test_study_sample_is_seeded_blinded_and_shuffled(runs: list[Path], tmp_path: Path) -> None:
    session = opened(runs, tmp_path)
    items, notes = sample(session.catalog, StudySettings(labels=2, originals=2, seed=3))
    again, _ = sample(session.catalog, StudySettings(labels=2, originals=2, seed=3))

    def ids(sampled):  # type: ignore[no-untyped-def]
        return [(label, source, [i.id for i in images]) for label, source, images in sampled]

    assert ids(items) == ids(again)
    assert len(items) == 4 and len({label for label, _, _ in items}) == 2 and notes == []
    for _label, source, images in items:
        assert sorted(i.method for i in images) == sorted(METHODS) and all(i.source == source for i in images)
    big, notes = sample(session.catalog, StudySettings(labels=10, originals=10, seed=0))
    assert len(big) == 8 and any("only 3 labels" in n for n in notes)  # everything there is, and a note
    orders = {tuple(i.method for i in imgs) for _, _, imgs in big}
    assert len(orders) > 1  # the methods' order changes from item to item
    other, _ = sample(session.catalog, StudySettings(labels=2, originals=2, seed=4))
    assert [s for _, s, _ in other] != [s for _, s, _ in items] or [
        tuple(i.method for i in imgs) for _, _, imgs in other
    ] != [tuple(i.method for i in imgs) for _, _, imgs in items]


def test_study_pages_never_name_the_method(runs: list[Path], tmp_path: Path) -> None:
    session = opened(runs, tmp_path, study=StudySettings(labels=3, originals=3, seed=0))
    c = client(session)
    start = c.get("/study")
    assert start.status_code == 200 and 'id="annotator-form"' in start.text
    csrf = csrf_of(start.text)
    c.post("/api/name", json={"name": "ann"}, headers={"X-CSRF-Token": csrf})
    first = c.get("/study", follow_redirects=False)
    assert first.status_code == 303 and first.headers["location"] == "/study/1"
    names = {*METHODS, *(run.name for run in session.catalog.runs), "_0.png", "_1.png", "metadata"}
    for number in range(1, 9):
        page = c.get(f"/study/{number}").text
        assert not [n for n in names if n in page], number
        assert page.count('class="study-image"') == 3 and "Semantic consistency" in page
        for position in range(3):
            assert c.get(f"/study/{number}/image/{position}").status_code == 200
        assert c.get(f"/study/{number}/original").status_code == 200
    assert c.get("/study/9").status_code == 404 and c.get("/study/1/image/3").status_code == 404


def test_study_is_stored_once_and_needs_the_same_input(runs: list[Path], tmp_path: Path, cache_dir: Path) -> None:
    settings = StudySettings(labels=2, originals=2, seed=0)
    first = opened(runs, tmp_path, study=settings)
    again = opened(list(reversed(runs)), tmp_path, study=settings)  # same runs, another order: the same study
    assert first.study is not None and again.study is not None and first.study.id == again.study.id
    assert again.db.study_items(again.study.id) == first.db.study_items(first.study.id)
    foreign = make_runs(tmp_path / "other", cache_dir, {"cat": 3, "dog": 3, "fox": 2}, seed=1)[
        0
    ]  # same names, other pixels
    with pytest.raises(SgidError, match="not of the same input"):
        opened([runs[0], foreign], tmp_path / "x", study=settings)
    # nor is a gallery over them: the second input's augmentations were shown beside the first one's original
    with pytest.raises(SgidError, match=r"not of the same input: .* made from different images at cat/"):
        opened([runs[0], foreign], tmp_path / "y")
    with pytest.raises(SgidError, match="labels"):
        StudySettings(labels=0)


def rate_all(db: ReviewDB, study_id: str, annotator: str, value) -> None:  # type: ignore[no-untyped-def]
    for item, _, _ in db.study_items(study_id):
        for position, method, _, _ in db.study_images(study_id, item):
            for scale in ("consistency", "diversity"):
                db.rate(study_id, annotator, item, position, scale, value(item, method, scale))


def test_export_writes_ratings_and_the_table_2_report(runs: list[Path], tmp_path: Path) -> None:
    session = opened(runs, tmp_path, study=StudySettings(labels=2, originals=2, seed=0))
    study = session.study
    assert study is not None
    consistency = {"randaugment": 5, "random_erasing": 4, "cutmix": 2}
    rate_all(session.db, study.id, "ann", lambda item, m, s: consistency[m] if s == "consistency" else 1 + item % 2)
    rate_all(session.db, study.id, "bob", lambda item, m, s: consistency[m] if s == "consistency" else 2)
    argv = ["review", *map(str, runs), "--db", str(tmp_path / "review.sqlite"), "--labels", "2", "--originals", "2"]
    argv += ["--cache-dir", str(tmp_path / "cache"), "--export"]
    assert main([*argv, str(tmp_path / "study.csv")]) == 0
    assert main([*argv, str(tmp_path / "study")]) == 0  # an earlier export is replaced
    (tmp_path / "mine.json").write_text("precious\n")  # a user's file is not
    assert main([*argv, str(tmp_path / "mine")]) == 2
    assert (tmp_path / "mine.json").read_text() == "precious\n" and not (tmp_path / "mine.csv").exists()
    assert main([*argv, str(runs[0] / "study")]) == 2  # nor into a run (or its real input) folder
    assert not list(runs[0].glob("study.*"))
    import csv

    rows = list(csv.DictReader((tmp_path / "study.csv").open()))
    assert len(rows) == 2 * 4 * 3 * 2 and set(rows[0]) >= {"annotator", "time", "item", "method", "scale", "value"}
    payload = json.loads((tmp_path / "study.json").read_text())
    report = payload["report"]
    assert report["methods"]["randaugment"]["consistency"] == {"mean": 5.0, "std": 0.0, "n": 8}
    assert report["methods"]["cutmix"]["diversity"]["mean"] == pytest.approx(1.75)
    assert report["alpha"]["consistency"] == pytest.approx(1.0)  # both annotators agree exactly
    units = sorted({(r["item"], r["position"]) for r in rows if r["scale"] == "diversity"})
    data = [
        [
            next(
                int(r["value"])
                for r in rows
                if r["annotator"] == a and r["scale"] == "diversity" and (r["item"], r["position"]) == u
            )
            for u in units
        ]
        for a in ("ann", "bob")
    ]
    import krippendorff

    expected = krippendorff.alpha(reliability_data=data, level_of_measurement="ordinal")
    assert report["alpha"]["diversity"] == pytest.approx(expected)
    md = (tmp_path / "study.md").read_text()
    assert "| Method | input Con. | input Div. |" in md
    assert "| randaugment | 5.00 ± 0.00 |" in md and "Krippendorff's α (ordinal" in md
    assert f"diversity: {expected:.3f}" in md


def test_export_without_a_study_is_one_line(
    runs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    opened(runs, tmp_path)  # a database without a study
    code = main(["review", *map(str, runs), "--db", str(tmp_path / "review.sqlite"), "--export", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and "no study over these runs" in err and err.count("\n") == 1
    # no database at all: said, and none is made (a failed export left a review.sqlite in the run folder)
    code = main(["review", *map(str, runs), "--db", str(tmp_path / "r.sqlite"), "--export", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and "review database not found" in err and not (tmp_path / "r.sqlite").exists()
    # an empty or folder --export is refused (one started the server, the other wrote beside the folder)
    (tmp_path / "exports").mkdir()
    for export, message in (("", "--export is empty"), (str(tmp_path / "exports"), "is a folder; name the files")):
        assert main(["review", *map(str, runs), "--export", export]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err
    assert not (runs[0] / "review.sqlite").exists() and list((tmp_path / "exports").iterdir()) == []


def test_bad_command_lines(runs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["review", str(tmp_path / "nothing")]) == 2
    assert main(["review", str(runs[0]), "--port", "70000"]) == 2
    assert main(["review", str(runs[0]), str(runs[0]), "--db", str(tmp_path / "r.sqlite")]) == 2
    assert "same run" in capsys.readouterr().err
    busy = bind("127.0.0.1", 0)
    try:
        with pytest.raises(SgidError, match="choose another --port"):
            bind("127.0.0.1", busy.getsockname()[1])
    finally:
        busy.close()


# -- Krippendorff's alpha --------------------------------------------------------------------------------------
def test_alpha_on_krippendorffs_own_example() -> None:
    """Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", the 4 observers × 12 units example
    with missing values: alpha = 0.743 nominal, 0.815 ordinal, 0.849 interval (published values)."""
    import krippendorff

    nan = np.nan
    data = [
        [1, 2, 3, 3, 2, 1, 4, 1, 2, nan, nan, nan],
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, nan, 3],
        [nan, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, nan],
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, nan],
    ]
    ratings = [
        Rating("s", f"observer {a}", unit, 0, "consistency", int(v), "m", 0.0)
        for a, row in enumerate(data)
        for unit, v in enumerate(row)
        if not np.isnan(v)
    ]
    assert round(krippendorff_alpha(ratings, "consistency"), 3) == 0.815  # type: ignore[arg-type]
    assert round(krippendorff.alpha(reliability_data=data, level_of_measurement="nominal"), 3) == 0.743
    assert round(krippendorff.alpha(reliability_data=data, level_of_measurement="interval"), 3) == 0.849


def test_alpha_is_undefined_without_two_annotators() -> None:
    one = [Rating("s", "ann", 1, p, "diversity", v, "m", 0.0) for p, v in enumerate([1, 2, 3])]
    assert krippendorff_alpha(one, "diversity") is None
    same = one + [Rating("s", "bob", 1, p, "diversity", 3, "m", 0.0) for p in range(3)]
    assert krippendorff_alpha(same, "diversity") is not None
    constant = [Rating("s", a, 1, 0, "diversity", 4, "m", 0.0) for a in ("ann", "bob")]
    assert krippendorff_alpha(constant, "diversity") is None


def test_another_programs_sqlite_database_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    """Found by a hostile-input run: --db pointing at another SQLite file got sgid's tables and WAL mode."""
    import sqlite3

    theirs = tmp_path / "people.db"
    connection = sqlite3.connect(theirs)
    connection.execute("CREATE TABLE people (name TEXT)")
    connection.commit()
    connection.close()
    before = theirs.read_bytes()
    with pytest.raises(SgidError, match=r"another program's SQLite database \(tables people\), not an sgid review"):
        ReviewDB(theirs)
    assert theirs.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["people.db"]
    empty = tmp_path / "empty.db"
    empty.touch()  # an empty file is a new database
    ReviewDB(empty).close()
    ReviewDB(empty).close()  # and sgid's own opens again


def test_a_rating_of_an_item_no_study_has_is_refused_not_a_server_error(runs: list[Path], tmp_path: Path) -> None:
    """Found by a hostile-input run: an item number beyond SQLite's integers was an HTTP 500 (OverflowError)."""
    c = client(opened(runs, tmp_path, study=StudySettings(labels=1, originals=1)))
    csrf = csrf_of(c.get("/study").text)
    headers = {"X-CSRF-Token": csrf}
    assert c.post("/api/name", json={"name": "ann"}, headers=headers).is_success
    for item in (10**30, -1, 2**63, True):
        body = {"item": item, "position": 0, "scale": "consistency", "value": 3}
        response = c.post("/api/rating", json=body, headers=headers)
        assert response.status_code == 400 and "item and position" in response.json()["error"], item


def test_a_cache_dir_that_is_a_file_is_refused_before_serving(runs: list[Path], tmp_path: Path) -> None:
    """Found by a hostile-input run: the server started and every thumbnail was an HTTP 500."""
    afile = tmp_path / "afile"
    afile.write_text("mine")
    with pytest.raises(SgidError, match=r"--cache-dir .*afile is a file, not a folder"):
        open_session(runs, db=tmp_path / "review.sqlite", cache_dir=afile)
    assert not (tmp_path / "review.sqlite").exists() and afile.read_text() == "mine"
