"""Retrieval: instead of generating, take the nearest real images from an unlabelled pool (``--pool DIR``).

Queries by CLIP similarity to the class text "a photo of a {label}" (``text``), to each training image
(``image``), or to the mean of both (``both``). Pool images that are near-duplicates of a training image
(cosine >= ``--duplicate-threshold``, 0.95) are dropped and listed in errors.jsonl, and so are pool images that
near-duplicate any image of an ``--exclude DIR`` folder (e.g. the test set, so retrieval cannot copy test images
into the training data). Every (source, k) gets its own pool image; the manifest records the ``query``, the
``score`` and the ``pool_path``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from sgid.dataset import Source
from sgid.errors import SgidError, need
from sgid.images import IMAGE_EXTENSIONS
from sgid.methods.base import METHODS, Method, MethodContext, Prepared, Services, SkipItem
from sgid.options import MethodOptions, option
from sgid.retrieval import Query, assign, near_duplicates
from sgid.sample import COPY, Sample

TEXT_QUERY = "a photo of a {label}"


def list_pool(pool: Path, flag: str = "--pool") -> list[Path]:
    """The image files under ``pool`` (recursively, hidden files and folders skipped), sorted."""
    if not pool.is_dir():
        raise SgidError(f"{flag} {pool} is not a folder")
    found = sorted(
        p
        for p in pool.rglob("*")
        if p.is_file()
        and p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(pool).parts)
    )
    if not found:
        raise SgidError(f"{flag} {pool} holds no images")
    return found


@dataclass(frozen=True)
class RetrievalOptions(MethodOptions):
    pool: Path | None = option(None, "retrieval: folder of unlabelled images to retrieve from")
    retrieval_query: str = option(
        "text",
        "retrieval: text ('a photo of a {label}'), image (each training image) or both",
        choices=("text", "image", "both"),
    )
    duplicate_threshold: float = option(
        0.95, "retrieval: drop pool images with this cosine similarity to a training image", at_least=-1, at_most=1
    )
    exclude: tuple[Path, ...] = option(
        (),
        "retrieval: also drop pool images this similar to any image under DIR, e.g. the test set (repeatable; each "
        "drop is listed in errors.jsonl)",
        metavar="DIR",
    )


@dataclass(frozen=True)
class PoolMatch:
    """The pool image one (source, k) gets, and why: the query and its score."""

    query: str
    score: float
    pool_path: str  # relative to --pool, as the manifest says it
    pool_file: Path

    def manifest_fields(self) -> dict[str, Any]:
        return {"query": self.query, "score": self.score, "pool_path": self.pool_path}


@dataclass(frozen=True)
class PoolMatches(Prepared):
    """(source relpath, k) -> its pool image; ``notes``: the pool images dropped and why."""

    plans: dict[tuple[str, int], PoolMatch] = field(default_factory=dict)


@METHODS.register("retrieval")
class RetrievalMethod(Method):
    name = "retrieval"
    uses_source_pixels = False
    resize_to_source = False
    generator_kinds = ()  # items are copies of pool images: no generator is loaded
    defaults = {"guidance": "1.0", "prompt_weighting": False}
    Options = RetrievalOptions

    def needs_scorer(self) -> bool:
        return True

    def generator_kind(self, source: Source) -> str:
        return COPY

    def needs_all_sources(self) -> bool:
        return True

    def check(self) -> None:
        if self.config.pool is None:
            raise SgidError("--method retrieval needs --pool DIR (a folder of unlabelled images)")
        for folder in self.config.exclude:
            if not Path(folder).is_dir():
                raise SgidError(f"--exclude {folder} is not a folder")

    def prepare(self, context: MethodContext, services: Services) -> PoolMatches:
        from sgid.features import ClipImageFeatures, FeatureCache, FeatureStore

        c = self.config
        assert services.scorer is not None  # needs_scorer(): loaded by the pipeline
        pool_paths = list_pool(need(c.pool, "--method retrieval needs --pool DIR"))
        cache = FeatureCache(services.cache_dir / "features.sqlite" if services.cache_dir else None)
        store = FeatureStore(
            ClipImageFeatures(services.scorer, services.scorer_id or "clip"),
            cache,
            quiet=c.quiet,
            label="pool features",
        )
        pool, pool_errors = store.extract(pool_paths)
        readable = [s for s in context.sources if s.relpath in context.infos]
        train = store([s.path for s in readable])
        excluded = np.zeros(len(pool_paths), bool)
        notes: list[dict[str, Any]] = []
        for index, reason in pool_errors.items():
            excluded[index] = True
            notes.append({"source": f"pool:{self.pool_name(pool_paths[index])}", "k": None, "reason": reason})
        duplicate, neighbour, closeness = near_duplicates(np.nan_to_num(pool), train, c.duplicate_threshold)
        for dup in np.flatnonzero(duplicate & ~excluded):
            excluded[dup] = True
            notes.append(
                {
                    "source": f"pool:{self.pool_name(pool_paths[dup])}",
                    "k": None,
                    "reason": f"near-duplicate of training image {readable[neighbour[dup]].relpath} "
                    f"(cosine {closeness[dup]:.4f} >= {c.duplicate_threshold})",
                }
            )
        for folder in c.exclude:
            self.drop_near(store, pool, pool_paths, excluded, notes, folder)
        queries, texts = self.queries(readable, train, context, services)
        matches = assign(queries, np.nan_to_num(pool), excluded)
        plans: dict[tuple[str, int], PoolMatch] = {}
        by_class: dict[str, list[Any]] = defaultdict(list)
        for source in readable:
            by_class[source.class_name].append(source)
        for query in queries:
            for match in matches[query.key]:
                if c.retrieval_query == "text":  # spread the class's ranked images over its sources and k
                    members = by_class[query.key]
                    source, k = members[match.rank % len(members)], match.rank // len(members)
                else:
                    source, k = next(s for s in readable if s.relpath == query.key), match.rank
                plans[(source.relpath, k)] = PoolMatch(
                    query=texts.get(query.key, source.relpath)
                    if c.retrieval_query != "both"
                    else f"{texts[query.key]} + {source.relpath}",
                    score=match.score,
                    pool_path=self.pool_name(pool_paths[match.pool_index]),
                    pool_file=pool_paths[match.pool_index],
                )
        return PoolMatches(notes=tuple(notes), plans=plans)

    def drop_near(
        self,
        store: Any,
        pool: np.ndarray,
        pool_paths: list[Path],
        excluded: np.ndarray,
        notes: list[dict[str, Any]],
        folder: Path,
    ) -> None:
        """Exclude (and list) the pool images that near-duplicate any image of ``folder`` (--exclude)."""
        paths = list_pool(Path(folder), "--exclude")
        features, unreadable = store.extract(paths)
        for index, reason in sorted(unreadable.items()):
            notes.append(
                {
                    "source": f"exclude:{paths[index]}",
                    "k": None,
                    "reason": f"{reason}; the pool was not checked against this excluded image",
                }
            )
        usable = [i for i in range(len(paths)) if i not in unreadable]
        near, neighbour, closeness = near_duplicates(
            np.nan_to_num(pool), features[usable], self.config.duplicate_threshold
        )
        for dup in np.flatnonzero(near & ~excluded):
            excluded[dup] = True
            image = paths[usable[neighbour[dup]]].relative_to(folder).as_posix()
            notes.append(
                {
                    "source": f"pool:{self.pool_name(pool_paths[dup])}",
                    "k": None,
                    "reason": f"near-duplicate of excluded image {Path(folder) / image} "
                    f"(cosine {closeness[dup]:.4f} >= {self.config.duplicate_threshold}; --exclude {folder})",
                }
            )

    def pool_name(self, path: Path) -> str:
        return path.relative_to(need(self.config.pool, "--method retrieval needs --pool DIR")).as_posix()

    def queries(
        self, readable, train, context: MethodContext, services: Services
    ) -> tuple[list[Query], dict[str, str]]:
        c = self.config
        K = c.multiplier
        if c.retrieval_query == "text":
            classes = sorted({s.class_name for s in readable})
            texts = {name: TEXT_QUERY.format(label=context.labels[name]) for name in classes}
            vectors = services.scorer.text_embeddings([texts[name] for name in classes]).numpy()
            counts = {name: K * sum(s.class_name == name for s in readable) for name in classes}
            return [Query(name, vectors[i], counts[name]) for i, name in enumerate(classes)], texts
        texts = {s.relpath: TEXT_QUERY.format(label=context.labels[s.class_name]) for s in readable}
        vectors = train
        if c.retrieval_query == "both":
            text_vectors = services.scorer.text_embeddings([texts[s.relpath] for s in readable]).numpy()
            vectors = (train + text_vectors) / 2  # inner product = mean of the two cosines
        return [Query(s.relpath, vectors[i], K) for i, s in enumerate(readable)], texts

    def plan(self, sample: Sample, context: MethodContext) -> Sample:
        found = context.prepared_as(PoolMatches).plans.get((sample.source.relpath, sample.k))
        if found is None:
            raise SkipItem("no unused pool image left among the query's nearest neighbours")
        return replace(
            sample,
            kind=COPY,
            strength=None,
            guidance_scale=None,
            copy_from=found.pool_file,
            extra=found.manifest_fields(),
        )
