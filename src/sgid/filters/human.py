"""``human``: the selections people made in ``sgid review`` (``--review-db FILE``).

Rejects what a reviewer rejected, and every augmentation of an original other than a reviewer's best-of-K pick
(the rule is :mod:`sgid.review.selection`'s, the same the gallery shows). The reason is ``human: rejected by
NAME``. Score: 1 accepted, 0 unreviewed, -1 rejected. Images nobody reviewed are kept.
"""

from __future__ import annotations

import numpy as np

from sgid.errors import SgidError
from sgid.filters.base import FILTERS, Filter, FilterInput, FilterModels, FilterOptions, Scores, Verdict


@FILTERS.register("human")
class HumanFilter(Filter):
    name = "human"
    options_read = frozenset({"review_db"})
    help = "reject what people rejected in sgid review (--review-db FILE), and what lost a best-of-K pick"

    def __init__(self, review_db) -> None:
        self.db = review_db  # sgid.review.db.ReviewDB

    @classmethod
    def check_options(cls, options: FilterOptions) -> None:
        if options.review_db is None:
            raise SgidError("--filters human needs --review-db FILE (the database sgid review wrote)")
        from sgid.review.db import ReviewDB

        ReviewDB(options.review_db, create=False).close()  # exists and is a review database

    @classmethod
    def uses_models(cls, options: FilterOptions) -> bool:
        return False

    @classmethod
    def create(cls, options: FilterOptions, models: FilterModels) -> HumanFilter:
        from sgid.review.db import ReviewDB

        assert options.review_db is not None
        return cls(ReviewDB(options.review_db, create=False))

    def score(self, data: FilterInput, active: np.ndarray) -> Scores:
        from sgid.review.selection import ACCEPTED, REJECTED, statuses

        run = data.run_identity
        if run is None:
            raise SgidError("the human filter needs the run's identity (its run.json)")
        decisions, picks = self.db.decisions([run]), self.db.picks([run])
        if not decisions and not picks:
            known = sorted(self.db.run_names().values())
            raise SgidError(
                f"{self.db.path} holds no review decisions for this run"
                + (f" (it has decisions for: {', '.join(known)})" if known else "")
            )
        found = statuses(((run, e.file_name, e.source) for e in data.generated), decisions, picks)
        self._statuses = [found.get((run, e.file_name)) for e in data.generated]
        values = [
            -1.0 if s is not None and s.state == REJECTED else 1.0 if s is not None and s.state == ACCEPTED else 0.0
            for s in self._statuses
        ]
        reviewed = sum(s is not None for s in self._statuses)
        return Scores(
            np.asarray(values, dtype=np.float64),
            extra={
                "human_reviewers": [", ".join(s.rejected_by or s.accepted_by) if s else None for s in self._statuses]
            },
            summary={"reviewed": reviewed, "unreviewed": len(values) - reviewed},
        )

    def decide(self, data: FilterInput, scores: Scores, active: np.ndarray) -> Verdict:
        reject = (scores.values < 0) & active
        reasons = [s.reason if reject[i] and s is not None else None for i, s in enumerate(self._statuses)]
        return Verdict(reject, reasons, {"review_db": str(self.db.path)})
