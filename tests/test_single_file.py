"""`--sd-model file.safetensors`: single-file checkpoints load through diffusers' from_single_file."""

from __future__ import annotations

from pathlib import Path

import pytest
import safetensors.torch
import torch

from sgid.cli import main
from sgid.models.loading import ModelRef, load_sd_pipeline


def test_single_file_checkpoint_gets_its_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import diffusers

    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(b"weights")
    seen: dict = {}

    def from_single_file(path, **kwargs):  # type: ignore[no-untyped-def]
        seen.update(path=path, **kwargs)
        raise OSError("stop here")

    monkeypatch.setattr(diffusers.StableDiffusionImg2ImgPipeline, "from_single_file", from_single_file)
    ref = ModelRef("model.safetensors", str(checkpoint), config="/models/sd-v1-5")
    with pytest.raises(Exception, match="cannot load the Stable Diffusion model"):
        load_sd_pipeline(ref, "img2img", torch.device("cpu"), torch.float32, False, private=True)
    assert seen["path"] == str(checkpoint) and seen["config"] == "/models/sd-v1-5" and seen["safety_checker"] is None


def test_single_file_errors_are_one_line(
    tmp_path: Path, image_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not safetensors")
    unknown = tmp_path / "unknown.safetensors"  # whole, but no architecture diffusers can tell from its keys
    safetensors.torch.save_file({"weight": torch.zeros(2)}, unknown)
    cut = tmp_path / "cut.safetensors"  # a download cut short
    cut.write_bytes(unknown.read_bytes()[:-4])
    pickle = tmp_path / "model.ckpt"
    pickle.write_bytes(b"pickle")
    for model, message in [
        (broken, "it is not a whole safetensors file ("),
        (cut, "it is not a whole safetensors file (Error while deserializing header"),
        (unknown, "--sd-config"),
        (pickle, "only .safetensors"),
        (tmp_path / "none.safetensors", "no such"),
    ]:
        code = main(
            [
                "augment",
                str(image_folder),
                "--out",
                str(tmp_path / "out"),
                "--models",
                "tiny",
                "--sd-model",
                str(model),
                "--prompt",
                "label",
                "--guidance",
                "2",
            ]
        )
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and message in err, err
