"""Shared offline fixtures: tiny random-weight models, and image folders.

Everything runs with HF_HUB_OFFLINE=1; nothing is downloaded. The tiny models are built once and kept on disk
between sessions (in ``$SGID_TEST_MODELS``, default ``~/.cache/sgid/tiny-models``), in a folder named after a
hash of their definition, so a changed definition is rebuilt and an unchanged one is never built twice. Every
other cache (captions, features) is fresh per session.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import pytest
import torch
from PIL import Image

CPU = torch.device("cpu")

#: Under pytest-xdist (`make test` runs two workers, TEST_JOBS) each worker computes with its share of the cores, and so
#: do the `sgid` subprocesses it starts (they inherit OMP_NUM_THREADS): runs compared byte for byte across processes
#: see one thread count.
XDIST_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 0)
if XDIST_WORKERS:
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // XDIST_WORKERS))
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

#: Test modules that share session fixtures run in one pytest-xdist worker (group), so each fixture is made once:
#: the reference runs of tests/method_runs.py; the uninterrupted run of the hostile-condition tests, and the
#: zygote their ``sgid`` processes are forked from (tests/zygote.py).
SHARED_GROUPS = {
    "test_replay": "method-runs",
    "test_restart": "method-runs",
    "test_signals": "hostile",
    "test_full_disk": "hostile",
    "test_readers": "hostile",
    "test_zygote": "hostile",
}


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """In a pytest-xdist worker (`--dist loadgroup`), every module is one unit of work (its module fixtures are made
    once), except the modules of :data:`SHARED_GROUPS`, which go together."""
    if not XDIST_WORKERS:
        return
    for item in items:
        module = item.nodeid.split("::")[0]
        item.add_marker(pytest.mark.xdist_group(SHARED_GROUPS.get(item.path.stem, module)))


def pytest_collection_finish(session: pytest.Session) -> None:
    """Under ``--dist loadgroup`` every test id must carry its group (pytest-xdist adds ``@group``): where a pytest
    release stores node ids out of pytest-xdist's reach, the groups would be dropped without a word."""
    if XDIST_WORKERS and session.config.getvalue("loadgroup"):
        untagged = [item.nodeid for item in session.items if "@" not in item.nodeid]
        if untagged:
            raise pytest.UsageError(
                f"pytest-xdist did not tag {untagged[0]} with its group (pytest {pytest.__version__}); "
                "install the pytest the dev extra asks for (make install)"
            )


@contextmanager
def one_thread() -> Iterator[None]:
    """Compute with one torch thread inside the block.

    A CPU reduction split over another number of threads rounds differently in the last bits, so tests that
    compare bytes across runs made in different processes (a forked child computes with one thread) or with
    different batch compositions fix the thread count instead of inheriting the machine's.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def persistent_models_dir() -> Path:
    """Where the tiny models are kept between test sessions."""
    if os.environ.get("SGID_TEST_MODELS"):
        return Path(os.environ["SGID_TEST_MODELS"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sgid" / "tiny-models"


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A session-wide sgid cache whose tiny models live on disk between sessions. Tests get it through SGID_CACHE."""
    path = tmp_path_factory.mktemp("sgid-cache")
    models = persistent_models_dir()
    try:
        models.mkdir(parents=True, exist_ok=True)
        (path / "tiny-models").symlink_to(models, target_is_directory=True)
    except OSError:  # a read-only home: build them inside the session's cache instead
        pass
    os.environ["SGID_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def tiny(cache_dir: Path):
    """The tiny model references (ModelChoice) for --models tiny."""
    from sgid.models.loading import resolve_models

    return resolve_models("tiny", cache_dir=cache_dir)


@pytest.fixture(scope="session")
def scorer(tiny):
    from sgid.models.loading import load_scorer
    from sgid.stages.score import ClipScorer

    model, processor = load_scorer(tiny.scorer, CPU, torch.float32)
    return ClipScorer(model, processor)


@pytest.fixture(scope="session")
def captioner(tiny):
    from sgid.models.loading import load_captioner
    from sgid.stages.caption import Captioner

    model, processor = load_captioner(tiny.captioner, CPU, torch.float32)
    return Captioner(model, processor)


@pytest.fixture(scope="session")
def img2img_pipe(tiny):
    from sgid.models.loading import load_sd_pipeline

    return load_sd_pipeline(tiny.generator, "img2img", CPU, torch.float32, False)


def noise_image(seed: int, size: tuple[int, int] = (32, 32)) -> Image.Image:
    """A deterministic RGB test image."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def make_image_folder(root: Path, classes: dict[str, int], size: tuple[int, int] = (32, 32), seed: int = 0) -> Path:
    """root/<class>/<i>.png with ``classes[name]`` images per class."""
    for c_index, (name, count) in enumerate(sorted(classes.items())):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            noise_image(seed * 1000 + c_index * 100 + i, size).save(root / name / f"{i}.png")
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """Two classes, three 32x32 images each."""
    return make_image_folder(tmp_path / "input", {"cat": 3, "golden_retriever": 3})


FAST: dict[str, Any] = {"models": "tiny", "steps": 4, "quiet": True}


@pytest.fixture(scope="session")
def augmented_run(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    """One finished ``sgid augment --models tiny`` run (2 classes x 3 images, multiplier 2), shared read-only."""
    from sgid.pipeline import augment

    root = tmp_path_factory.mktemp("augmented")
    source = make_image_folder(root / "input", {"cat": 3, "golden_retriever": 3})
    augment(source, root / "out", multiplier=2, cache_dir=cache_dir, **FAST)
    return root / "out"


@pytest.fixture(scope="session")
def method_runs(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path):  # type: ignore[no-untyped-def]
    """One reference run per method at batch size 2 with far-apart guidance and weights (tests/method_runs.py)."""
    from method_runs import MethodRuns

    return MethodRuns(tmp_path_factory.mktemp("method-runs"), cache_dir)


@pytest.fixture
def forbid_model_loading(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every way sgid builds or loads a model fails the test (and is recorded in the returned list): sgid's own
    loaders wherever they were imported, the tiny-model builder, and the libraries' ``from_pretrained`` /
    ``create_model`` entry points. For "bad input is refused before any model loads"."""
    import importlib
    import sys

    touched: list[str] = []

    def refusing(name: str):  # type: ignore[no-untyped-def]
        def refuse(*args, **kwargs):  # type: ignore[no-untyped-def]
            touched.append(name)
            raise AssertionError(f"{name} was called before the options were checked")

        return refuse

    owners = {
        "sgid.models.loading": ("load_captioner", "load_scorer", "load_sd_pipeline", "load_text_model"),
        "sgid.models.tiny": ("ensure_tiny_models",),
        "sgid.evaluate.backbones": ("build_backbone", "load_clip"),
        "sgid.features": ("load_clip",),
    }
    import pkgutil

    import sgid

    for info in pkgutil.walk_packages(sgid.__path__, "sgid."):  # a module first imported while the loaders are
        if not info.name.endswith("__main__"):  # patched would keep the refusing stand-in for good: import all now
            importlib.import_module(info.name)
    originals: dict[int, str] = {}
    for module_name, names in owners.items():
        module = importlib.import_module(module_name)
        for name in names:
            originals[id(getattr(module, name))] = f"{module_name}.{name}"
    for module_name, module in list(sys.modules.items()):  # every place the loaders were imported into
        if module_name == "sgid" or module_name.startswith("sgid."):
            for attribute, value in list(vars(module).items()):
                if id(value) in originals:
                    monkeypatch.setattr(module, attribute, refusing(originals[id(value)]))
    import diffusers
    import transformers
    from diffusers.loaders.single_file import FromSingleFileMixin

    for owner, method in (
        (transformers.PreTrainedModel, "from_pretrained"),
        (diffusers.DiffusionPipeline, "from_pretrained"),
        (diffusers.ModelMixin, "from_pretrained"),
        (FromSingleFileMixin, "from_single_file"),
    ):
        monkeypatch.setattr(owner, method, classmethod(refusing(f"{owner.__name__}.{method}")))
    for module_name, function in (("timm", "create_model"), ("open_clip", "create_model")):
        monkeypatch.setattr(importlib.import_module(module_name), function, refusing(f"{module_name}.{function}"))
    return touched


@pytest.fixture(scope="session")
def hostile_run(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> tuple[Path, Path]:
    """(input folder, its uninterrupted run with ``hostile.AUGMENT``): the run that stopped and resumed runs of the
    hostile-condition tests (signals, full disk) must end as; shared read-only."""
    from hostile import uninterrupted

    return uninterrupted(tmp_path_factory.mktemp("hostile"), cache_dir)
