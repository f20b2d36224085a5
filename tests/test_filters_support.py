"""Helpers shared by the filter and metrics tests (no tests here): hand-made augment runs, and stand-ins for
the models with embeddings chosen by the test, so every rule is checked on exact numbers."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from conftest import noise_image
from sgid.images import sha256_bytes


def make_run(
    root: Path,
    classes: Mapping[str, int],
    k: int = 2,
    *,
    originals: bool = False,
    prompt: Callable[[str, int, int], str | None] | None = None,
) -> Path:
    """An augment run written by hand: ``root/input/<class>/<i>.png`` (real) and ``root/run`` with
    ``<class>/<i>_sgid_<j>.png`` (generated, j < k), optional ``<class>/<i>_original.png`` copies,
    metadata.jsonl and run.json. Returns ``root/run``."""
    real, run = root / "input", root / "run"
    rows = []
    seed = 0
    for label, count in sorted(classes.items()):
        (real / label).mkdir(parents=True, exist_ok=True)
        (run / label).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            source = f"{label}/{i}.png"
            noise_image(seed).save(real / source)
            seed += 1
            digest = sha256_bytes((real / source).read_bytes())
            common = {"label": label, "label_text": label.replace("_", " "), "source": source, "source_sha256": digest}
            if originals:
                name = f"{label}/{i}_original.png"
                (run / name).write_bytes((real / source).read_bytes())
                rows.append({"file_name": name, **common, "k": None, "method": "original"})
            for j in range(k):
                name = f"{label}/{i}_sgid_{j}.png"
                noise_image(seed).save(run / name)
                seed += 1
                text = prompt(label, i, j) if prompt else f"A picture of a {label.replace('_', ' ')}, caption {i}"
                rows.append({"file_name": name, **common, "k": j, "method": "sgid", "prompt": text})
    (run / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    info = {
        "config": {"input_dir": str(real.resolve()), "models": "tiny"},
        "models": {"scorer": "tiny:clip"},
        "identity": {"x": 1},
        "identity_sha256": "abc",
    }
    (run / "run.json").write_text(json.dumps(info))
    return run


def key(path: Path) -> str:
    """``<class>/<file>`` of an image path: names generated and real images apart (``cat/0_sgid_1.png`` vs
    ``cat/0.png``)."""
    return "/".join(Path(path).parts[-2:])


def unit(*values: float, dim: int = 4) -> np.ndarray:
    vector = np.zeros(dim)
    vector[: len(values)] = values
    return vector / np.linalg.norm(vector)


def at_cosine(s: float, dim: int = 4) -> np.ndarray:
    """A unit vector whose cosine with e0 is ``s``."""
    return unit(s, float(np.sqrt(max(0.0, 1 - s * s))), dim=dim)


class FakeImages:
    """Image embeddings looked up by ``<class>/<file>``; unknown images get ``default``."""

    def __init__(self, vectors: Mapping[str, np.ndarray], default: np.ndarray | None = None) -> None:
        self.vectors = dict(vectors)
        self.default = default
        self.calls: list[list[str]] = []

    def __call__(self, paths: Sequence[Path]) -> np.ndarray:
        names = [key(p) for p in paths]
        self.calls.append(names)
        rows = [self.vectors.get(n, self.default) for n in names]
        assert all(r is not None for r in rows), f"no embedding for {names}"
        return np.array(rows, dtype=np.float64).reshape(len(names), -1)


class FakeTexts:
    def __init__(self, embed: Callable[[str], np.ndarray]) -> None:
        self.embed = embed

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        return np.array([self.embed(t) for t in texts], dtype=np.float64)


class FakeModels:
    """What filters are built from, with the test's embeddings and classifier."""

    def __init__(self, images: FakeImages, texts: FakeTexts | None = None, classifier=None) -> None:  # type: ignore[no-untyped-def]
        self.images = images
        self.texts = texts or FakeTexts(lambda t: unit(1.0))
        self._classifier = classifier

    def classifier(self, directory: Path):  # type: ignore[no-untyped-def]
        assert self._classifier is not None
        return self._classifier


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
