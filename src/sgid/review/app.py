"""The review web app (Starlette, server-rendered Jinja2 pages, a little plain JavaScript).

Pages: ``/gallery`` (originals beside their augmentations; filter, sort, page; accept / reject / best of K) or,
for a study, ``/study`` (annotator name, then one blinded item per page, two 1–5 scales per image): a server
serves one or the other, since the gallery names every image's method. Images are
addressed by number (``/thumb/12``, ``/image/12``, ``/original/3``, ``/study/7/image/2``): no request path ever
reaches the file system. Writes are JSON POSTs to ``/api/...`` carrying the CSRF token; every one is a single
database transaction. See :mod:`sgid.review.security` for the guards every request passes.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field
from typing import Any, TypeGuard
from urllib.parse import quote, unquote, urlencode

from sgid.errors import SgidError, require
from sgid.images import ImageError
from sgid.review.catalog import Catalog, Group, Item, servable
from sgid.review.db import SCALES, ReviewDB, check_name
from sgid.review.security import SESSION_COOKIE, Csrf, Guard
from sgid.review.selection import ACCEPTED, REJECTED, UNREVIEWED, UNTOUCHED, Status, statuses
from sgid.review.study import DEFINITIONS, POSITIONS, Study
from sgid.review.thumbs import Thumbnails

NAME_COOKIE = "sgid_name"
PER_PAGE = 12
MAX_PER_PAGE = 200
DECISION_FILTERS = ("any", UNREVIEWED, ACCEPTED, REJECTED, "best", "filter_keep", "filter_reject")
SORTS = {
    "source": "original",
    "similarity": "similarity s* (low first)",
    "-similarity": "similarity s* (high first)",
    "guidance": "guidance g (low first)",
    "-guidance": "guidance g (high first)",
    "method": "method",
}


@dataclass
class ReviewState:
    catalog: Catalog
    db: ReviewDB
    thumbnails: Thumbnails
    study: Study | None = None
    csrf: Csrf = field(default_factory=Csrf)


@dataclass(frozen=True)
class Query:
    """The gallery's filters, sort and page, parsed from the URL."""

    label: str = ""
    method: str = ""
    decision: str = "any"
    smin: float | None = None
    smax: float | None = None
    sort: str = "source"
    page: int = 1
    per: int = PER_PAGE

    @classmethod
    def parse(cls, params: Any) -> Query:
        def number(name: str, kind: type) -> Any:
            raw = params.get(name, "").strip()
            if not raw:
                return None
            try:
                value = kind(raw)
            except ValueError:
                raise SgidError(f"{name}={raw!r} is not a number") from None
            if isinstance(value, float) and not math.isfinite(value):
                raise SgidError(f"{name}={raw!r} is not a finite number")
            return value

        decision = params.get("decision", "any") or "any"
        if decision not in DECISION_FILTERS:
            raise SgidError(f"decision={decision!r}; choose from: {', '.join(DECISION_FILTERS)}")
        sort = params.get("sort", "source") or "source"
        if sort not in SORTS:
            raise SgidError(f"sort={sort!r}; choose from: {', '.join(SORTS)}")
        page, per = number("page", int), number("per", int)
        page, per = 1 if page is None else page, PER_PAGE if per is None else per
        if page < 1 or not 1 <= per <= MAX_PER_PAGE:
            raise SgidError(f"page must be >= 1 and per between 1 and {MAX_PER_PAGE}")
        return cls(
            params.get("label", ""),
            params.get("method", ""),
            decision,
            number("smin", float),
            number("smax", float),
            sort,
            page,
            per,
        )

    def url(self, **changes: Any) -> str:
        values = {**self.__dict__, **changes}
        defaults = Query().__dict__
        kept = {k: v for k, v in values.items() if v is not None and v != "" and v != defaults[k]}
        return "/gallery" + ("?" + urlencode(kept) if kept else "")


def _matches(item: Item, q: Query, status: Status) -> bool:
    if q.label and item.label != q.label or q.method and item.method != q.method:
        return False
    if q.smin is not None and (item.similarity is None or item.similarity < q.smin):
        return False
    if q.smax is not None and (item.similarity is None or item.similarity > q.smax):
        return False
    d = q.decision
    if d in (UNREVIEWED, ACCEPTED, REJECTED):
        return status.state == d
    if d == "best":
        return bool(status.best_by)
    if d in ("filter_keep", "filter_reject"):
        return item.filter_decision == d.split("_")[1]
    return True


def _sort_key(q: Query):
    name = q.sort.lstrip("-")
    sign = -1.0 if q.sort.startswith("-") else 1.0

    def item_key(item: Item) -> tuple[Any, ...]:
        if name in ("similarity", "guidance"):
            value = item.similarity if name == "similarity" else item.guidance
            return (value is None, sign * value if value is not None else 0.0, item.id)
        if name == "method":
            return (item.method, item.id)
        return (item.id,)

    return item_key


def gallery_page(state: ReviewState, q: Query, reviewer: str | None) -> dict[str, Any]:
    """Everything the gallery template shows for one page."""
    catalog = state.catalog
    found = _statuses(state)
    key = _sort_key(q)
    groups: list[tuple[Group, list[Item]]] = []
    for group in catalog.groups:
        shown = [i for i in group.items if _matches(i, q, found.get((i.run.identity, i.file_name), UNTOUCHED))]
        if shown:
            groups.append((group, sorted(shown, key=key)))
    if q.sort != "source":
        groups.sort(key=lambda g: key(g[1][0]))
    pages = max(1, math.ceil(len(groups) / q.per))
    page = min(q.page, pages)
    chosen = groups[(page - 1) * q.per : page * q.per]
    return {
        "query": q,
        "page": page,
        "pages": pages,
        "total_groups": len(groups),
        "total_items": sum(len(items) for _, items in groups),
        "groups": [
            {
                "original": group.original,
                "original_ok": servable(group.original.path, group.original.root) is not None,
                "k": len(group.items),
                "items": [_card(i, found.get((i.run.identity, i.file_name), UNTOUCHED), reviewer) for i in items],
            }
            for group, items in chosen
        ],
        "labels": catalog.labels,
        "methods": catalog.methods,
        "decisions": DECISION_FILTERS,
        "sorts": SORTS,
        "runs": catalog.runs,
        "reviewer": reviewer,
        "prev_url": q.url(page=page - 1) if page > 1 else None,
        "next_url": q.url(page=page + 1) if page < pages else None,
    }


def _statuses(state: ReviewState) -> dict[tuple[str, str], Status]:
    runs = [run.identity for run in state.catalog.runs]
    return statuses(
        ((i.run.identity, i.file_name, i.source) for i in state.catalog.items),
        state.db.decisions(runs),
        state.db.picks(runs),
    )


def _card(item: Item, status: Status, reviewer: str | None) -> dict[str, Any]:
    return {"item": item, "status": status_json(status, reviewer)}


def status_json(status: Status, reviewer: str | None) -> dict[str, Any]:
    """What a card shows about people's decisions; ``mine`` is the current reviewer's own."""
    mine = None
    if reviewer is not None:
        if reviewer in status.best_by:
            mine = "best"
        elif reviewer in {who for who, _ in status.passed_over_by}:
            mine = "passed"
        elif reviewer in status.rejected_by:
            mine = "reject"
        elif reviewer in status.accepted_by:
            mine = "accept"
    parts = []
    if status.best_by:
        parts.append("best: " + ", ".join(status.best_by))
    accepted = [a for a in status.accepted_by if a not in status.best_by]
    if accepted:
        parts.append("accepted: " + ", ".join(accepted))
    passed = {who for who, _ in status.passed_over_by}
    rejected = [r for r in status.rejected_by if r not in passed]
    if rejected:
        parts.append("rejected: " + ", ".join(rejected))
    if passed:
        parts.append("another is the best for: " + ", ".join(sorted(passed)))
    return {"state": status.state, "mine": mine, "text": "; ".join(parts) or "not reviewed", "reason": status.reason}


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


# -- the Starlette app ----------------------------------------------------------------------------------------
def create_app(
    state: ReviewState,
    *,
    token: str | None = None,
    allowed_hosts: tuple[str, ...] | None = ("127.0.0.1", "localhost", "::1"),
) -> Any:
    """The ASGI app. ``allowed_hosts`` None accepts any Host header (for a public bind, guarded by ``token``)."""
    require("starlette", "review")
    jinja2 = require("jinja2", "review")
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import (
        FileResponse,
        HTMLResponse,
        JSONResponse,
        PlainTextResponse,
        RedirectResponse,
        Response,
    )
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("sgid.review", "templates"),
        autoescape=True,  # every {{ }} is HTML-escaped: captions and prompts are model output
        undefined=jinja2.StrictUndefined,
    )
    env.filters["fmt"] = _fmt
    env.globals.update(letters=POSITIONS, definitions=DEFINITIONS, scales=SCALES, study_mode=state.study is not None)

    def session(request: Request) -> tuple[str, bool]:
        found = request.cookies.get(SESSION_COOKIE)
        return (found, False) if found else (secrets.token_urlsafe(24), True)

    def name_of(request: Request) -> str | None:
        raw = request.cookies.get(NAME_COOKIE)
        if not raw:
            return None
        try:
            return check_name(unquote(raw))
        except SgidError:
            return None

    def page(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        sid, new = session(request)
        html = env.get_template(template).render(csrf=state.csrf.token(sid), name=name_of(request), **context)
        response = HTMLResponse(html, status_code=status_code)
        if new:
            response.set_cookie(SESSION_COOKIE, sid, httponly=True, samesite="strict")
        return response

    def error(request: Request, message: str, status_code: int = 400) -> HTMLResponse:
        return page(request, "error.html", status_code, message=message)

    async def write_body(request: Request) -> dict[str, Any]:
        """The JSON body of a write, after the CSRF and origin checks."""
        origin = request.headers.get("origin")
        if origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}":
            raise PermissionError("cross-origin write refused")
        if not state.csrf.check(request.cookies.get(SESSION_COOKIE), request.headers.get("x-csrf-token")):
            raise PermissionError("missing or wrong CSRF token; reload the page")
        try:
            body = await request.json()
        except ValueError:
            raise SgidError("the request body is not JSON") from None
        if not isinstance(body, dict):
            raise SgidError("the request body must be a JSON object")
        return body

    def guarded(handler):
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request)
            except PermissionError as exc:
                return JSONResponse({"error": str(exc)}, status_code=403)
            except SgidError as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)

        return endpoint

    def file_response(path: Any, media_type: str | None = None, cache: bool = False) -> Response:
        if path is None:
            return PlainTextResponse("not found", status_code=404)
        headers = {"cache-control": "private, max-age=3600"} if cache else None
        return FileResponse(path, media_type=media_type, headers=headers)

    def item_or_none(raw: Any) -> Item | None:
        return state.catalog.items[raw] if _count(raw) and raw < len(state.catalog.items) else None

    # -- pages ---------------------------------------------------------------------------------------------
    async def home(request: Request) -> Response:
        return RedirectResponse("/study" if state.study else "/gallery", status_code=303)

    async def gallery(request: Request) -> Response:
        try:
            q = Query.parse(request.query_params)
        except SgidError as exc:
            return error(request, str(exc))
        return page(request, "gallery.html", **gallery_page(state, q, name_of(request)))

    # -- files ---------------------------------------------------------------------------------------------
    async def thumbnail(path: Any) -> Response:
        """The cached thumbnail, made on a worker thread (decoding runs beside other requests)."""
        if path is None:
            return file_response(None)
        try:
            made = await run_in_threadpool(state.thumbnails.get, path)
        except ImageError as exc:
            return PlainTextResponse(f"unreadable image: {exc}", status_code=415)
        return file_response(made, "image/jpeg", cache=True)

    async def thumb(request: Request) -> Response:
        item = item_or_none(request.path_params["id"])
        return await thumbnail(servable(item.path, item.run.path) if item else None)

    async def image(request: Request) -> Response:
        item = item_or_none(request.path_params["id"])
        return file_response(servable(item.path, item.run.path) if item else None)

    def original_path(number: int) -> Any:
        originals = state.catalog.originals
        if not 0 <= number < len(originals):
            return None
        return servable(originals[number].path, originals[number].root)

    async def original(request: Request) -> Response:
        return file_response(original_path(request.path_params["id"]))

    async def original_thumb(request: Request) -> Response:
        return await thumbnail(original_path(request.path_params["id"]))

    # -- writes --------------------------------------------------------------------------------------------
    async def set_name(request: Request) -> Response:
        body = await write_body(request)
        name = check_name(body.get("name"), "name")
        response = JSONResponse({"name": name})
        response.set_cookie(NAME_COOKIE, quote(name), httponly=True, samesite="strict")
        return response

    def reviewer_of(request: Request) -> str:
        name = name_of(request)
        if name is None:
            raise SgidError("enter your name first (top of the page)")
        return name

    async def decision(request: Request) -> Response:
        body = await write_body(request)
        reviewer = reviewer_of(request)
        item = item_or_none(body.get("item"))
        if item is None:
            raise SgidError("unknown image")
        value = body.get("decision")
        if value not in ("accept", "reject", None):
            raise SgidError("decision must be accept, reject or null")
        state.db.set_decision(item.run.identity, item.file_name, reviewer, value)
        return JSONResponse(group_statuses(item, reviewer))

    async def best(request: Request) -> Response:
        body = await write_body(request)
        reviewer = reviewer_of(request)
        item = item_or_none(body.get("item"))
        if item is None or item.source is None:
            raise SgidError("unknown image, or an image without an original to be the best of")
        state.db.set_best(item.run.identity, item.source, reviewer, None if body.get("clear") else item.file_name)
        return JSONResponse(group_statuses(item, reviewer))

    def group_statuses(item: Item, reviewer: str) -> dict[str, Any]:
        """The new status of every image of the item's original (a best pick changes its siblings)."""
        found = _statuses(state)
        siblings = [i for i in state.catalog.items if i.source == item.source] if item.source else [item]
        return {
            "items": {
                str(i.id): status_json(found.get((i.run.identity, i.file_name), UNTOUCHED), reviewer) for i in siblings
            }
        }

    # -- the study -----------------------------------------------------------------------------------------
    def study_or_404() -> Study:
        if state.study is None:
            raise LookupError
        return state.study

    def study_items() -> list[tuple[int, str, str]]:
        return state.db.study_items(study_or_404().id)

    async def study_home(request: Request) -> Response:
        if state.study is None:
            return error(request, "no study: start sgid review with --study", 404)
        annotator = name_of(request)
        items = study_items()
        if annotator is None:
            return page(request, "study_start.html", study=state.study, items=len(items))
        rated = {(r.item, r.position, r.scale) for r in state.db.ratings(state.study.id, annotator)}
        for number, _label, _source in items:
            images = state.db.study_images(state.study.id, number)
            if any((number, p, s) not in rated for p, *_ in images for s in SCALES):
                return RedirectResponse(f"/study/{number}", status_code=303)
        return page(request, "study_done.html", study=state.study, items=len(items), annotator=annotator)

    async def study_item(request: Request) -> Response:
        if state.study is None:
            return error(request, "no study: start sgid review with --study", 404)
        annotator = name_of(request)
        if annotator is None:
            return RedirectResponse("/study", status_code=303)
        number = request.path_params["n"]
        items = study_items()
        if not 1 <= number <= len(items):
            return error(request, f"there is no item {number}; the study has {len(items)}", 404)
        images = state.db.study_images(state.study.id, number)
        given = {
            (r.position, r.scale): r.value for r in state.db.ratings(state.study.id, annotator) if r.item == number
        }
        return page(
            request,
            "study_item.html",
            study=state.study,
            number=number,
            count=len(items),
            label_text=state.catalog.labels.get(items[number - 1][1], items[number - 1][1]),
            positions=[position for position, *_ in images],
            given=given,
            annotator=annotator,
            done=sum(1 for n, *_ in items if n < number),
        )

    def study_file(number: int, position: int | None) -> Any:
        if state.study is None:
            return None
        items = study_items()
        if not 1 <= number <= len(items):
            return None
        if position is None:
            original = state.catalog.original_by_source.get(items[number - 1][2])
            return servable(original.path, original.root) if original else None
        for pos, _method, run, file_name in state.db.study_images(state.study.id, number):
            if pos == position:
                item = state.catalog.item_by_key.get((run, file_name))
                return servable(item.path, item.run.path) if item else None
        return None

    async def study_original(request: Request) -> Response:
        return file_response(study_file(request.path_params["n"], None))

    async def study_image(request: Request) -> Response:
        return file_response(study_file(request.path_params["n"], request.path_params["position"]))

    async def rating(request: Request) -> Response:
        body = await write_body(request)
        if state.study is None:
            raise SgidError("no study is open")
        annotator = reviewer_of(request)
        item, position, value = body.get("item"), body.get("position"), body.get("value")
        if not all(_count(n) and n < 2**31 for n in (item, position)):  # SQLite's integers end at 2**63
            raise SgidError("item and position must be numbers of the study's items")
        state.db.rate(state.study.id, annotator, item, position, str(body.get("scale")), value)  # type: ignore[arg-type]
        return JSONResponse({"saved": True})

    async def not_found(request: Request, exc: Exception) -> Response:
        return PlainTextResponse("not found", status_code=404)

    # A server runs the gallery or a blinded study, never both: the gallery names every image's method.
    routes: list[Any]
    if state.study is None:
        routes = [
            Route("/gallery", gallery),
            Route("/thumb/{id:int}", thumb),
            Route("/image/{id:int}", image),
            Route("/original/{id:int}", original),
            Route("/original-thumb/{id:int}", original_thumb),
            Route("/api/decision", guarded(decision), methods=["POST"]),
            Route("/api/best", guarded(best), methods=["POST"]),
        ]
    else:
        routes = [
            Route("/study", study_home),
            Route("/study/{n:int}", study_item),
            Route("/study/{n:int}/original", study_original),
            Route("/study/{n:int}/image/{position:int}", study_image),
            Route("/api/rating", guarded(rating), methods=["POST"]),
        ]
    routes += [
        Route("/", home),
        Route("/api/name", guarded(set_name), methods=["POST"]),
        Mount("/static", StaticFiles(packages=[("sgid.review", "static")]), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers={404: not_found, LookupError: not_found})
    return Guard(app, allowed_hosts=allowed_hosts, token=token)


def _count(value: object) -> TypeGuard[int]:
    """A JSON number that counts things: an int >= 0, not ``true``/``false`` (Python's bools are ints)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
