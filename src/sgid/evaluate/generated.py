"""Named generated runs for ``sgid evaluate --generated``: ``NAME=DIR`` (or a bare ``DIR``, named ``generated``)
and the provenance recorded for each: folder, run identity, augment method and its variant, models, and whether
the models were the tiny random ones.

A run whose method used a stand-in for the paper's language model (``variant`` ``templates``, ``borrowed`` or
``built_in``, recorded by ``sgid augment``) labels its rows, e.g. "text2img (templates)", so a table never
presents a fallback as the paper's baseline.

    >>> parse_generated(["sgid=runs/sgid", "runs/t2i"], ["randaugment"])
    [('sgid', PosixPath('runs/sgid')), ('generated', PosixPath('runs/t2i'))]

A name is a method component of ``--methods`` (``sgid``, ``sgid+randaugment``). Several folders under one name
(two bare folders, or ``a=X a=Y``) form one generated set, as a single folder split in two would.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sgid.errors import SgidError
from sgid.evaluate.methods import GENERATED, GENERATED_NAME, check_generated_name
from sgid.manifest import MANIFEST, RUN_FILE, read_run, read_run_info

TINY_PREFIX = "tiny:"  # model names of the tiny random-weight stand-ins (sgid.models.loading)
#: variants that stand in for the paper's language-model baselines (text2img, diverse_caption, instruct_pix2pix)
STAND_INS = ("templates", "borrowed", "built_in")

#: What a caller may pass as generated folders: ``["sgid=runs/sgid", "runs/t2i"]`` or ``{"sgid": "runs/sgid"}``.
GeneratedSpecs = Sequence[str | Path] | Mapping[str, str | Path]


@dataclass(frozen=True)
class GeneratedRun:
    """Where one generated folder came from (results.json ``generated``, results.md "Generated data")."""

    name: str  # the method component in --methods
    folder: str  # absolute path
    identity: str | None  # run.json identity_sha256 (the augment run's settings); None if not recorded
    manifest_sha256: str  # the metadata.jsonl read
    method: str | None  # the augment method (run.json config.method, else the manifest's)
    variant: str | None = None  # the method's variant(s) in the rows ("templates", "lm+templates"), else run.json's
    models: dict[str, str] = field(default_factory=dict)  # role -> model name (run.json "models")
    tiny: bool = False  # made with the tiny random-weight models: its images are noise
    filtered_from: str | None = None  # a sgid filter output: the run it filtered
    images: int = 0  # generated images used (rows other than copies of originals)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def parse_generated(specs: GeneratedSpecs, perturbations: Iterable[str]) -> list[tuple[str, Path]]:
    """``NAME=DIR`` or ``DIR`` (named ``generated``) → (name, folder) pairs; names are checked against the method
    names; a folder given twice is refused (its images would count twice)."""
    known = list(perturbations)
    pairs: list[tuple[str, Path]] = []
    if isinstance(specs, Mapping):
        pairs = [(str(name), Path(folder)) for name, folder in specs.items()]
    else:
        for spec in specs:
            name, folder = _split(spec)
            pairs.append((name, folder))
    seen: dict[Path, str] = {}
    for name, folder in pairs:
        check_generated_name(name, known)
        key = folder.resolve()
        if key in seen:
            raise SgidError(
                f"--generated {folder} is given twice ({seen[key]} and {name}); its images would count twice"
            )
        seen[key] = name
    return pairs


def _split(spec: str | Path) -> tuple[str, Path]:
    if isinstance(spec, Path):
        return GENERATED, spec
    text = str(spec)
    name, sep, folder = text.partition("=")
    if sep and GENERATED_NAME.match(name) and "/" not in name:
        if not folder:
            raise SgidError(f"--generated {text}: no folder after '='; e.g. --generated {name}=runs/{name}")
        return name, Path(folder)
    return GENERATED, Path(text)


def names_of(specs: GeneratedSpecs, perturbations: Iterable[str]) -> list[str]:
    """The generated sets' names, in the order given, each once."""
    return list(dict.fromkeys(name for name, _ in parse_generated(specs, perturbations)))


def read_provenance(name: str, folder: Path, images: int) -> GeneratedRun:
    """The provenance of one generated folder, from its run.json and metadata.jsonl."""
    folder = Path(folder)
    manifest = (folder / MANIFEST).read_bytes()
    info = _run_info(folder)
    config = _dict(info.get("config"))
    models = {str(k): str(v) for k, v in _dict(info.get("models")).items()}
    method = config.get("method") if isinstance(config.get("method"), str) else _manifest_method(folder)
    tiny = config.get("models") == "tiny" or any(v.startswith(TINY_PREFIX) for v in models.values())
    identity = info.get("identity_sha256")
    filtered_from = info.get("filtered_from")
    recorded = info.get("variant")
    variant = _manifest_values(folder, "variant") or (recorded if isinstance(recorded, str) else None)
    return GeneratedRun(
        name=name,
        folder=str(folder.resolve()),
        identity=identity if isinstance(identity, str) else None,
        manifest_sha256=hashlib.sha256(manifest).hexdigest(),
        method=method,
        variant=variant,
        models=models,
        tiny=tiny,
        filtered_from=filtered_from if isinstance(filtered_from, str) else None,
        images=images,
    )


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _run_info(folder: Path) -> dict[str, Any]:
    try:
        return read_run_info(folder / RUN_FILE)
    except SgidError:
        return {}


def _manifest_method(folder: Path) -> str | None:
    return _manifest_values(folder, "method", ",")


def _manifest_values(folder: Path, key: str, separator: str = "+") -> str | None:
    """The distinct values of ``key`` in the generated rows (not copies of originals), sorted and joined."""
    try:
        rows = read_run(folder).rows
    except SgidError:
        return None
    return separator.join(sorted({r[key] for r in rows if isinstance(r.get(key), str) and not r.is_original})) or None


def stand_in_suffix(runs: Iterable[GeneratedRun]) -> str:
    """`` (templates)`` for a set whose runs used a stand-in variant (`` (text2img: templates)`` when the set's
    name is not the augment method's); empty when none did.

    >>> stand_in_suffix([GeneratedRun("text2img", "/r", None, "0", "text2img", "templates")])
    ' (templates)'
    >>> stand_in_suffix([GeneratedRun("generated", "/r", None, "0", "text2img", "lm+templates")])
    ' (text2img: lm+templates)'
    >>> stand_in_suffix([GeneratedRun("text2img", "/r", None, "0", "text2img", "lm")])
    ''
    """
    parts: list[str] = []
    for run in runs:
        variant = run.variant or ""
        if not any(v in STAND_INS for v in variant.split("+")):
            continue
        parts.append(variant if run.method == run.name else f"{run.method}: {variant}")
    return f" ({'; '.join(dict.fromkeys(parts))})" if parts else ""


def tiny_warning(runs: Iterable[GeneratedRun | Mapping[str, Any]]) -> str | None:
    """One line naming the generated methods made with the tiny random-weight models, or None."""
    names = list(dict.fromkeys(_get(run, "name") for run in runs if _get(run, "tiny")))
    if not names:
        return None
    which = ", ".join(f"`{n}`" for n in names)
    verb, its = ("was", "its") if len(names) == 1 else ("were", "their")
    return (
        f"{which} {verb} generated with the tiny random-weight models (--models tiny): {its} images are noise, "
        f"so {its} rows test the pipeline, not the augmentation."
    )


def _get(run: GeneratedRun | Mapping[str, Any], key: str) -> Any:
    return run.get(key) if isinstance(run, Mapping) else getattr(run, key)
