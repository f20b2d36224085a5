"""``sgid review RUN_DIR [RUN_DIR ...]``: a local web app to look at runs, accept / reject images and pick the
best of K, and (``--study``) run the SGID paper's blinded 1-5 rating study; ``--export FILE`` writes its ratings
and report. Needs ``pip install 'sgid[review]'``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

HELP = "review runs in the browser: select images, run and export the paper's blinded rating study"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("review", help=HELP, description=__doc__)
    p.add_argument(
        "run_dirs",
        metavar="RUN_DIR",
        nargs="+",
        help="output folders of sgid augment (for --study: one per method, all of the same input)",
    )
    p.add_argument(
        "--port", metavar="PORT", type=int, default=8765, help="port to listen on; 0 picks a free one [default: 8765]"
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on; anything but a loopback address needs --token (or gets a generated one) "
        "[default: 127.0.0.1]",
    )
    p.add_argument(
        "--token", metavar="TOKEN", help="access token every request must carry (?token=, cookie or Bearer header)"
    )
    p.add_argument(
        "--db", metavar="FILE", help="the review database (SQLite) [default: the first RUN_DIR's review.sqlite]"
    )
    p.add_argument(
        "--filters",
        metavar="DIR",
        action="append",
        default=[],
        help="an sgid filter output folder of one of the runs, to show its decisions and reasons (repeatable)",
    )
    p.add_argument(
        "--source-dir", metavar="DIR", help="where the runs' real input images are now [default: run.json's input]"
    )
    study = p.add_argument_group("rating study (SGID table 2)")
    study.add_argument(
        "--study",
        action="store_true",
        help="serve the blinded rating study over the runs (one per method) instead of the gallery",
    )
    study.add_argument(
        "--labels", metavar="L", type=int, default=10, help="labels sampled (the paper's L) [default: 10]"
    )
    study.add_argument(
        "--originals", metavar="M", type=int, default=10, help="originals per label (the paper's M) [default: 10]"
    )
    study.add_argument("--seed", type=int, default=0, help="seed of the sample and of the shown order [default: 0]")
    study.add_argument(
        "--export",
        metavar="FILE",
        help="write the study's ratings to FILE.csv and FILE.json and its report (table 2 layout, Krippendorff's "
        "alpha) to FILE.md, then exit",
    )
    p.add_argument("--cache-dir", metavar="DIR", help="where thumbnails are cached [default: ~/.cache/sgid]")
    p.add_argument("--quiet", "-q", action="store_true", help="less output")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from sgid.errors import SgidError
    from sgid.review.server import open_session, serve
    from sgid.review.study import StudySettings, export

    if not 0 <= args.port <= 65535:
        raise SgidError(f"--port {args.port} must be between 0 and 65535")
    if args.token is not None and not args.token.strip():
        raise SgidError("--token is empty")
    if args.export is not None:
        if not args.export.strip():
            raise SgidError("--export is empty: name the files to write (FILE.csv, FILE.json, FILE.md)")
        if args.export.endswith(("/", os.sep)) or Path(args.export).expanduser().is_dir():
            raise SgidError(
                f"--export {args.export} is a folder; name the files to write in it, e.g. {Path(args.export) / 'study'}"
                f" (study.csv, study.json, study.md)"
            )
    settings = StudySettings(args.labels, args.originals, args.seed) if args.study or args.export else None
    session = open_session(
        args.run_dirs,
        db=args.db,
        filters=args.filters,
        source_dir=args.source_dir,
        study=settings,
        create_study=not args.export,
        create_db=not args.export,  # an export reads a study: no database is made where there is none
        cache_dir=args.cache_dir,
    )
    if args.export:
        assert session.study is not None
        target = Path(args.export).expanduser().resolve()
        for run in session.catalog.runs:
            for what, folder in (("the run folder", run.path), ("the real input folder", run.source_dir)):
                if folder is not None and Path(folder).resolve() in target.parents:
                    raise SgidError(
                        f"--export {args.export} is inside {what} {folder}; the files would become part of that "
                        f"data: choose a place outside it"
                    )
        paths = export(session.db, session.study, args.export)
        print("sgid review: wrote " + ", ".join(str(p) for p in paths), file=sys.stderr)
        return 0
    serve(session, host=args.host, port=args.port, token=args.token, quiet=args.quiet)
    return 0
