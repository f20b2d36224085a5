"""Opening the runs and the database, binding the address, and running the app with uvicorn.

The socket is bound here (not by uvicorn), so a busy port or a bad address is a one-line error, and ``--port 0``
picks a free port that is then printed. A non-loopback ``--host`` always has an access token: the one given, or a
generated one that is printed with the address.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sgid.errors import SgidError, require
from sgid.review.catalog import Catalog
from sgid.review.db import ReviewDB
from sgid.review.security import LOOPBACK, is_loopback, new_token
from sgid.review.study import Study, StudySettings, open_study
from sgid.review.thumbs import Thumbnails

DB_NAME = "review.sqlite"


@dataclass
class Session:
    """Everything a review server (or an export) works on."""

    catalog: Catalog
    db: ReviewDB
    thumbnails: Thumbnails
    study: Study | None


def open_session(
    runs: Sequence[str | Path],
    *,
    db: str | Path | None = None,
    filters: Sequence[str | Path] = (),
    source_dir: str | Path | None = None,
    study: StudySettings | None = None,
    create_study: bool = True,
    cache_dir: str | Path | None = None,
    create_db: bool = True,
) -> Session:
    """Read the runs, open (or create) the database and, with ``study`` settings, the study."""
    if not runs:
        raise SgidError("give at least one run folder (RUN_DIR) to review")
    catalog = Catalog.open(runs, filters, source_dir)
    if cache_dir is None:
        from sgid.models.loading import default_cache_dir

        cache_dir = default_cache_dir()
    if Path(cache_dir).exists() and not Path(cache_dir).is_dir():  # every thumbnail would fail, one by one
        raise SgidError(f"--cache-dir {cache_dir} is a file, not a folder")
    database = ReviewDB(Path(db) if db else Path(runs[0]) / DB_NAME, create=create_db)
    database.register_runs([(run.identity, str(run.path.resolve()), run.name) for run in catalog.runs])
    opened = open_study(catalog, database, study, create=create_study) if study else None
    return Session(catalog, database, Thumbnails(Path(cache_dir) / "thumbnails"), opened)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port), or a one-line error."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise SgidError(f"--host {host}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if port:
            raise SgidError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port") from None
        raise SgidError(f"cannot listen on {host} ({exc.strerror})") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def access(host: str, token: str | None) -> tuple[str | None, tuple[str, ...] | None]:
    """(token, allowed Host names): loopback binds answer only loopback names; others need a token."""
    if is_loopback(host):
        return token, (*LOOPBACK, host)
    return token or new_token(), None


def make_app(session: Session, *, token: str | None, allowed_hosts: tuple[str, ...] | None) -> Any:
    from sgid.review.app import ReviewState, create_app

    state = ReviewState(session.catalog, session.db, session.thumbnails, session.study)
    return create_app(state, token=token, allowed_hosts=allowed_hosts)


def serve(session: Session, *, host: str, port: int, token: str | None, quiet: bool = False) -> None:
    """Run until interrupted."""
    uvicorn = require("uvicorn", "review")
    token, allowed = access(host, token)
    sock = bind(host, port)
    app = make_app(session, token=token, allowed_hosts=allowed)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{bound}/" + (f"?token={token}" if token else "")
    where = "study" if session.study else "gallery"
    print(f"sgid review: {where} of {len(session.catalog.items)} images at {url}", file=sys.stderr, flush=True)
    print(f"sgid review: decisions and ratings go to {session.db.path}; Ctrl-C stops", file=sys.stderr, flush=True)
    for note in session.study.notes if session.study else []:
        print(f"sgid review: note: {note}", file=sys.stderr, flush=True)
    config = uvicorn.Config(app, log_level="warning" if not quiet else "error", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        session.db.close()
