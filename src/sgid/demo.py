"""``sgid demo``: the main job on an embedded default.

Assembles a small labelled folder from photos that scikit-image ships (no download), runs ``sgid augment``
on it and writes ``index.html`` with each original beside its augmentations. With ``--models tiny`` (the
default) everything runs offline on a CPU; the images are noise. With ``--models default``
on a GPU it shows what SGID really does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sgid.errors import require
from sgid.models.loading import TINY_WARNING
from sgid.outdir import check_out_dir

#: class folder -> skimage.data loaders (all bundled with scikit-image, none downloaded)
DEMO_IMAGES = {
    "cat": ("chelsea",),
    "astronaut": ("astronaut",),
    "coffee_cup": ("coffee",),
    "rocket": ("rocket",),
    "motorcycle": ("stereo_motorcycle",),
    "brick_wall": ("brick",),
    "grass": ("grass",),
    "gravel": ("gravel",),
}


def build_demo_folder(dest: Path) -> Path:
    """Write ``dest/<class>/<name>.png`` from scikit-image's bundled photos; return ``dest``."""
    data = require("skimage.data", "demo")
    for class_name, loaders in DEMO_IMAGES.items():
        (dest / class_name).mkdir(parents=True, exist_ok=True)
        for loader in loaders:
            result = getattr(data, loader)()
            arrays = result[:2] if isinstance(result, tuple) else (result,)  # stereo_motorcycle: left, right, disp
            for index, array in enumerate(arrays):
                image = Image.fromarray(np.asarray(array, dtype=np.uint8))
                suffix = f"_{index}" if len(arrays) > 1 else ""
                target = dest / class_name / f"{loader}{suffix}.png"
                if not target.exists():
                    image.save(target)
    return dest


DEMO_OUTPUTS = ("input", "augmented", "augmented.stages", "index.html")


DEMO_TITLE = "sgid demo: SGID augmentations"


def is_demo_output(folder: Path) -> bool:
    """A folder holding only what an earlier ``sgid demo`` wrote (rerun: resumed; nothing else is touched): the
    names it writes, an ``index.html`` that is its page, and an ``input/`` of its own classes only (a user's
    ``index.html`` or dataset there was replaced or augmented)."""
    if not all(p.name in DEMO_OUTPUTS or p.name.startswith(".") for p in folder.iterdir()):
        return False
    index = folder / "index.html"
    if index.exists() and (not index.is_file() or f"<title>{DEMO_TITLE}</title>".encode() not in index.read_bytes()):
        return False
    inputs = folder / "input"
    if inputs.exists():
        if not inputs.is_dir():
            return False
        names = {p.name for p in inputs.iterdir() if not p.name.startswith(".")}
        if not names <= set(DEMO_IMAGES):
            return False
    return True


def run_demo(out: Path, *, models: str = "tiny", multiplier: int = 2, **options: Any) -> Path:
    """Build the demo folder under ``out/input``, augment into ``out/augmented``, write ``out/index.html``."""
    from sgid.config import AugmentConfig
    from sgid.gallery import render_gallery
    from sgid.options import resolve_options
    from sgid.pipeline import augment
    from sgid.runstore import atomic_write

    out = Path(out)
    augmented = out / "augmented"
    settings = {k: v for k, v in options.items() if k != "print_summary"}
    settings = resolve_options({"models": models, "multiplier": multiplier, **settings})
    AugmentConfig.build(out / "input", augmented, **settings)  # every option checked before anything is written
    check_out_dir(out, command="demo", owned=is_demo_output)
    source = build_demo_folder(out / "input")
    augment(source, augmented, models=models, multiplier=multiplier, **options)
    note = TINY_WARNING if models == "tiny" else ""
    page = render_gallery(augmented, source, title=DEMO_TITLE, note=note)
    index = out / "index.html"
    atomic_write(index, page.encode("utf-8"))
    return index
