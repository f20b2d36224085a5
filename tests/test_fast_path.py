"""The one-GPU fast path: what can be checked on a CPU (the GPU figures come from benchmarks/gpu_throughput.py)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from PIL import Image

from conftest import FAST, make_image_folder
from sgid.errors import SgidError
from sgid.pipeline import augment


def pngs(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*.png"))}


def test_speed_up_on_cuda_means_channels_last_sdpa_and_sliced_vae(tiny) -> None:  # type: ignore[no-untyped-def]
    """The CUDA defaults, applied to a private CPU copy (the layout calls are the same on any device)."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    from sgid.models.loading import load_sd_pipeline
    from sgid.stages.bundle import speed_up

    pipe = load_sd_pipeline(tiny.generator, "img2img", torch.device("cpu"), torch.float32, False, private=True)
    pipe.unet.set_attn_processor(AttnProcessor())  # e.g. a pipeline set up elsewhere without SDPA
    speed_up(pipe, torch.device("cuda"))
    conv = pipe.unet.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert pipe.vae.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert all(isinstance(p, AttnProcessor2_0) for p in pipe.unet.attn_processors.values())
    assert pipe.vae.use_slicing and pipe.vae.use_tiling  # tiles engage only above the model's image size
    speed_up(pipe, torch.device("cpu"))  # the CPU decodes one image at a time too (memory flat in the batch)
    assert pipe.vae.use_slicing and not pipe.vae.use_tiling


def test_a_controlnet_gets_the_unets_fast_path(tiny, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """``--control``'s ControlNet runs at every step beside the UNet: channels-last with it on CUDA (the layout call
    is the same on any device, so a private CPU copy shows it), left as it is on a CPU."""
    import copy

    from sgid.backends import BACKENDS
    from sgid.config import AugmentConfig
    from sgid.models.loading import load_controlnet, load_sd_pipeline, resolve_models
    from sgid.stages import bundle

    choice = resolve_models("tiny", cache_dir=cache_dir, control="canny")
    assert choice.controlnet is not None
    shared = load_controlnet(choice.controlnet, torch.device("cpu"), torch.float32)
    copies = [copy.deepcopy(shared) for _ in range(2)]  # the cached ControlNet keeps its layout for other tests
    monkeypatch.setattr(bundle, "load_controlnet", lambda ref, device, dtype: copies.pop(0))
    pipe = load_sd_pipeline(tiny.generator, "img2img", torch.device("cpu"), torch.float32, False)
    config = AugmentConfig.build(".", "/tmp/unused", models="tiny", control="canny", quiet=True)
    for device, channels_last in (("cuda", True), ("cpu", False)):
        guide = bundle._controlnet_guide(config, choice, BACKENDS.get("sd"), pipe, torch.device(device), torch.float32)
        weight = guide.controlnet.conv_in.weight
        assert weight.is_contiguous(memory_format=torch.channels_last) == channels_last, device
        assert weight.is_contiguous() != channels_last, device


def test_vae_tiling_runs_deterministically_for_images_larger_than_the_model(tmp_path: Path, cache_dir: Path) -> None:
    source = make_image_folder(tmp_path / "in", {"a": 2}, size=(48, 32))  # generated at 48x32 > the 32 px model
    for name in ("one", "two"):
        augment(source, tmp_path / name, vae_tiling="on", cache_dir=cache_dir, **FAST)
    augment(source, tmp_path / "untiled", vae_tiling="off", cache_dir=cache_dir, **FAST)
    tiled = pngs(tmp_path / "one")
    assert tiled == pngs(tmp_path / "two") and len(tiled) == 2
    assert tiled.keys() == pngs(tmp_path / "untiled").keys()
    # tiling changed those pixels, so a resume with another --vae-tiling is another run: refused, like --dtype
    for out, other in (("one", "off"), ("untiled", "on"), ("untiled", "auto")):
        with pytest.raises(SgidError, match=r"different settings \(vae_tiling\)"):
            augment(source, tmp_path / out, vae_tiling=other, cache_dir=cache_dir, **FAST)
    assert pngs(tmp_path / "one") == tiled


def test_vae_tiling_is_part_of_the_run_identity_and_auto_keeps_earlier_runs_resumable() -> None:
    from sgid.config import EXECUTION_ONLY, AugmentConfig

    identities = {v: AugmentConfig.build("in", "out", vae_tiling=v).identity() for v in ("auto", "on", "off")}
    assert "vae_tiling" not in EXECUTION_ONLY
    assert identities["on"]["vae_tiling"] == "on" and identities["off"]["vae_tiling"] == "off"
    # runs made while the setting counted as execution-only recorded no vae_tiling: the default still matches them
    assert "vae_tiling" not in identities["auto"]
    assert AugmentConfig.build("in", "out", batch_size=7).identity() == identities["auto"]


def test_the_next_batch_is_read_while_one_generates_and_images_are_encoded_off_the_main_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sgid.config import AugmentConfig
    from sgid.dataset import Source
    from sgid.execute import Worker, WorkerSpec
    from sgid.plan import Batch, Shard, WorkItem
    from sgid.sample import Sample, SourceInfo
    from sgid.stages.bundle import Stages

    events: list[tuple[str, int, str]] = []
    second_batch_read = threading.Event()

    def pixels(self: Any, batch: Batch) -> None:
        number = batch.items[0].sample.k
        events.append(("read", number, threading.current_thread().name))
        if number == 1:
            second_batch_read.set()

    class Generator:
        resolution, size_multiple, model_id = 32, 2, "fake"
        backend = SimpleNamespace(name="sd")

        def __call__(self, batch: list[Sample], images: Any, size: tuple[int, int]) -> list[tuple[Image.Image, bool]]:
            events.append(("generate", batch[0].k, threading.current_thread().name))
            if batch[0].k == 0:  # batch 1 must be read while batch 0 is still on the "accelerator"
                assert second_batch_read.wait(10), "the next batch was not read ahead"
            return [(Image.new("RGB", size), False) for _ in batch]

    monkeypatch.setattr(Worker, "_pixels", pixels)
    config = AugmentConfig.build(".", "/tmp/unused", models="tiny", quiet=True)
    stages = Stages(generators={"img2img": Generator()})
    worker = Worker(WorkerSpec(config, None), stages)  # type: ignore[arg-type]
    source = Source(Path("/x/a/0.png"), "a/0.png", "a", "a")
    info = SourceInfo("0" * 64, (32, 32))
    batches = tuple(
        Batch((32, 32), (WorkItem(f"key{k}", f"a/0_{k}.png", Sample(source, k, seed=k, info=info)),)) for k in range(3)
    )
    main = threading.current_thread().name
    results = list(worker.generate(Shard(0, batches)))
    assert [r.key for r in results] == ["key0", "key1", "key2"] and all(r.png for r in results)
    assert [e for e in events if e[0] == "generate"] == [("generate", k, main) for k in range(3)]
    assert {thread for kind, _, thread in events if kind == "read"} == {"sgid-read_0"}


@pytest.mark.slow
@pytest.mark.parametrize("options", [{"compile": True}, {"dtype": "bf16"}])
def test_compile_and_bf16_run_and_stay_deterministic(options: dict[str, Any], tmp_path: Path, cache_dir: Path) -> None:
    source = make_image_folder(tmp_path / "in", {"a": 2})
    started = time.monotonic()
    for name in ("one", "two"):
        augment(source, tmp_path / name, batch_size=2, cache_dir=cache_dir, **options, **FAST)
    assert pngs(tmp_path / "one") == pngs(tmp_path / "two") and len(pngs(tmp_path / "one")) == 2
    assert time.monotonic() - started < 600
