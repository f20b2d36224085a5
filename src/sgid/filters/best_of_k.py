"""``best_of_k``: among the augmentations of one source keep the best ``--keep`` (the replication report's
best-of-3, 000, done by a score instead of by hand).

The ranking score is another filter's (``--rank-by``, default ``original``: similarity to the source image, as
000 measures it). Only augmentations still in play compete; images without a source, or without a ranking
score, have nothing to be compared with and are kept.
"""

from __future__ import annotations

import numpy as np

from sgid.errors import SgidError
from sgid.filters.base import FILTERS, Filter, FilterInput, FilterModels, FilterOptions, Scores, Verdict
from sgid.filters.rules import outside_top_k
from sgid.registry import did_you_mean


@FILTERS.register("best_of_k")
class BestOfKFilter(Filter):
    name = "best_of_k"
    options_read = frozenset({"keep", "rank_by"})
    help = "keep the --keep best augmentations of each source by --rank-by's score (000's best-of-3)"

    def __init__(self, ranker: Filter, keep: int = 1) -> None:
        self.ranker = ranker
        self.keep = keep

    @classmethod
    def check_options(cls, options: FilterOptions) -> None:
        if options.keep < 1:
            raise SgidError(f"--keep {options.keep}: keep at least 1 augmentation per source")
        if options.rank_by == cls.name or options.rank_by not in FILTERS:
            names = [n for n in FILTERS.names() if n != cls.name]
            hint = did_you_mean(options.rank_by, names)
            raise SgidError(f"unknown --rank-by {options.rank_by!r}; choose from: {', '.join(names)}{hint}")
        FILTERS.get(options.rank_by).check_options(options)

    @classmethod
    def needs(cls, options: FilterOptions) -> frozenset[str]:
        return FILTERS.get(options.rank_by).needs(options)

    @classmethod
    def settings(cls, options: FilterOptions) -> frozenset[str]:
        ranker = FILTERS.get(options.rank_by) if options.rank_by in FILTERS else None
        return cls.options_read | (ranker.settings(options) if ranker is not None else frozenset())

    @classmethod
    def uses_models(cls, options: FilterOptions) -> bool:
        return FILTERS.get(options.rank_by).uses_models(options)

    @classmethod
    def create(cls, options: FilterOptions, models: FilterModels) -> BestOfKFilter:
        return cls(FILTERS.get(options.rank_by).create(options, models), options.keep)

    def score(self, data: FilterInput, active: np.ndarray) -> Scores:
        ranked = self.ranker.score(data, active)
        return Scores(ranked.values, ranked.missing, summary={"rank_by": self.ranker.name})

    def decide(self, data: FilterInput, scores: Scores, active: np.ndarray) -> Verdict:
        groups = [e.source for e in data.generated]
        reject, ranks = outside_top_k(scores.values, groups, active, self.keep)
        competitors: dict[str | None, int] = {}
        for group, rank in zip(groups, ranks, strict=True):
            if rank:
                competitors[group] = competitors.get(group, 0) + 1
        return Verdict.explained(
            reject,
            data,
            lambda i, e: (
                f"best_of_k: rank {ranks[i]} of {competitors[e.source]} augmentations of {e.source} by "
                f"{self.ranker.name} score {scores.values[i]:.4f} (keeping {self.keep})"
            ),
            {"keep": self.keep, "rank_by": self.ranker.name},
        )
