"""A self-contained HTML page for a run: each original beside its augmentations, with caption, prompt,
similarity and guidance scale. Images are embedded (base64 thumbnails); every text is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
from collections import defaultdict
from pathlib import Path
from typing import Any

from PIL import Image

from sgid.dataset import locate
from sgid.images import ImageError, load_rgb
from sgid.manifest import ManifestRow, read_run

THUMBNAIL = 192


def _data_uri(image: Image.Image) -> str:
    image = image.copy()
    image.thumbnail((THUMBNAIL, THUMBNAIL), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(image: Image.Image | None, lines: list[tuple[str, str]]) -> str:
    picture = f'<img src="{_data_uri(image)}" alt="">' if image is not None else '<div class="missing">unreadable</div>'
    caption = "".join(f"<div><b>{html.escape(k)}</b> {html.escape(v)}</div>" for k, v in lines)
    return f"<figure>{picture}<figcaption>{caption}</figcaption></figure>"


def _fmt(value: Any, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def render_gallery(run_dir: Path, input_dir: Path, *, title: str = "sgid augmentations", note: str = "") -> str:
    """The HTML page for the run in ``run_dir`` whose originals are under ``input_dir``."""
    rows = [r for r in read_run(run_dir).rows if not r.is_original]
    by_source: dict[str, list[ManifestRow]] = defaultdict(list)
    for row in rows:
        by_source[row.source or ""].append(row)
    sections = []
    for source in sorted(by_source):
        try:
            original: Image.Image | None = load_rgb(locate(input_dir, source)).image if source else None
        except ImageError:
            original = None
        cells = [_figure(original, [("original", source)])] if source else []
        for row in sorted(by_source[source], key=lambda r: r.k or 0):
            details = [
                ("k", str(row.k)),
                ("caption", row.get("caption") or "–"),
                ("prompt", row.prompt or "–"),
                ("similarity s*", _fmt(row.get("similarity"))),
                ("guidance g", _fmt(row.get("guidance_scale"))),
                ("noise n", _fmt(row.get("noise_rate"), 2)),
            ]
            with Image.open(run_dir / row.file_name) as generated:
                cells.append(_figure(generated.convert("RGB"), details))
        label = by_source[source][0].label_text
        sections.append(f"<section><h2>{html.escape(label)}</h2><div class='row'>{''.join(cells)}</div></section>")
    banner = f"<p class='note'>{html.escape(note)}</p>" if note else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
.row {{ display: flex; flex-wrap: wrap; gap: 1em; }}
figure {{ margin: 0; width: {THUMBNAIL}px; font-size: 12px; }}
figure img {{ width: {THUMBNAIL}px; height: auto; image-rendering: pixelated; border: 1px solid #ccc; }}
.note {{ background: #fff3cd; padding: .6em 1em; border-radius: 4px; }}
.missing {{ width: {THUMBNAIL}px; height: {THUMBNAIL}px; background: #eee; }}
h2 {{ font-size: 16px; margin-top: 1.5em; }}
</style></head>
<body><h1>{html.escape(title)}</h1>{banner}<p>{len(rows)} augmented images of {len(by_source)} originals.</p>
{"".join(sections)}
</body></html>
"""
