"""A misspelt name of a registry (method, backend, engine, filter, backbone, ...) is refused in one line that
lists the valid names and suggests the closest one; the suggestion comes from one place, ``sgid.registry``."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import make_image_folder
from sgid.cli import main
from sgid.errors import SgidError
from sgid.registry import Registry, closest, did_you_mean

CASES = [
    ("augment", ["{input}", "--method", "sgdi"], "unknown method 'sgdi'; choose from: ", "did you mean 'sgid'?"),
    ("augment", ["{input}", "--backend", "sdx"], "unknown backend 'sdx'; choose from: ", "did you mean 'sdxl'?"),
    ("augment", ["{input}", "--engine", "rey"], "unknown engine 'rey'; choose from: local, ray", "mean 'ray'?"),
    ("augment", ["{input}", "--preset", "cifar11"], "unknown preset 'cifar11'", "did you mean 'cifar10'?"),
    ("filter", ["{run}", "--filters", "label,promt"], "unknown filter 'promt'", "did you mean 'prompt'?"),
    (
        "filter",
        ["{run}", "--filters", "best_of_k", "--rank-by", "orignal"],
        "unknown --rank-by 'orignal'",
        "did you mean 'original'?",
    ),
    ("evaluate", ["--train", "{input}", "--test", "{input}", "--backbone", "resnet5"], "backbone", "'resnet50'?"),
]


@pytest.mark.parametrize(("command", "argv", "message", "suggestion"), CASES)
def test_a_misspelt_name_gets_the_closest_one_in_its_one_line_error(
    command: str, argv: list[str], message: str, suggestion: str, tmp_path: Path, forbid_model_loading, capsys
) -> None:  # type: ignore[no-untyped-def]
    from test_filters_support import make_run

    folders = {
        "input": make_image_folder(tmp_path / "input", {"cat": 2, "dog": 2}),
        "run": make_run(tmp_path / "made", {"cat": 2, "dog": 2}, k=1),
    }
    code = main([command, *(a.format(**folders) for a in argv), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("sgid: error: "), err
    assert message in err and err.rstrip().endswith(suggestion), err
    assert not (tmp_path / "out").exists()


def test_a_name_close_to_none_gets_no_guess() -> None:
    registry: Registry[int] = Registry("engine")
    registry.add("local", 1)
    registry.add("ray", 2)
    with pytest.raises(SgidError) as caught:
        registry.get("spark")
    assert str(caught.value) == "unknown engine 'spark'; choose from: local, ray"
    assert closest("lokal", registry.names()) == "local" and did_you_mean("spark", registry.names()) == ""
