"""Condition images for ControlNet-guided generation (``--control``), computed from each source image.

A control kind turns the source pixels img2img starts from into the image a ControlNet was trained on: edges
(``canny``, OpenCV's Canny detector, as lllyasviel's annotator and diffusers' examples compute them) or a depth map
(``depth``, from a depth-estimation model the user supplies with ``--control-model``). The computation is
deterministic and per image, so condition images do not depend on the batch; the kind and its parameters are
recorded in every manifest row (:meth:`Control.describe`).

Kinds are a registry: the ``--control`` value is the key. A new kind subclasses :class:`Control`, sets
``controlnets`` (backend family -> a ControlNet trained on it, the default of ``--controlnet``) and implements
``__call__``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from sgid.errors import require
from sgid.registry import Registry


class Control:
    """A kind of condition image; instances hold its parameters."""

    name: ClassVar[str] = ""
    #: backend family -> the hub id of a ControlNet trained on this kind of condition (``--controlnet`` default)
    controlnets: ClassVar[Mapping[str, str]] = {}
    #: whether it needs a model (``--control-model``), and that model's default (the tiny preset's)
    needs_model: ClassVar[bool] = False
    default_model: ClassVar[str] = ""
    tiny_model: ClassVar[str] = ""

    @classmethod
    def from_config(cls, config: Any, model: tuple[Any, Any, str] | None = None) -> Control:
        """This kind with a run's parameters (an :class:`~sgid.config.AugmentConfig`); ``model``: (model,
        processor, name) for a kind that ``needs_model``."""
        return cls()

    def params(self) -> dict[str, Any]:
        """The parameters the condition depends on (recorded in the manifest)."""
        return {}

    def describe(self) -> dict[str, Any]:
        return {"kind": self.name, **self.params()}

    def __call__(self, images: Sequence[Image.Image]) -> list[Image.Image]:
        """One RGB condition image per source image, of the same size."""
        raise NotImplementedError


#: Condition kinds by name: the ``--control`` value is the key.
CONTROLS: Registry[type[Control]] = Registry("control")


@CONTROLS.register("canny")
class Canny(Control):
    """Canny edges (white on black, three channels) with hysteresis thresholds ``low`` and ``high``."""

    name = "canny"
    controlnets: ClassVar[Mapping[str, str]] = {
        "sd": "lllyasviel/sd-controlnet-canny",
        "sdxl": "diffusers/controlnet-canny-sdxl-1.0",
    }

    def __init__(self, low: int = 100, high: int = 200) -> None:
        if not 0 <= low <= high:
            raise ValueError(f"Canny thresholds: need 0 <= low ({low}) <= high ({high})")
        self.low, self.high = low, high

    @classmethod
    def from_config(cls, config: Any, model: tuple[Any, Any, str] | None = None) -> Control:
        return cls(config.canny_low, config.canny_high)

    def params(self) -> dict[str, Any]:
        return {"low_threshold": self.low, "high_threshold": self.high}

    def __call__(self, images: Sequence[Image.Image]) -> list[Image.Image]:
        cv2 = require("cv2", "control")
        out = []
        for image in images:
            edges = cv2.Canny(np.asarray(image.convert("RGB")), self.low, self.high)
            out.append(Image.fromarray(np.repeat(edges[:, :, None], 3, axis=2)))
        return out


@CONTROLS.register("depth")
class Depth(Control):
    """A depth map from a transformers depth-estimation model (e.g. ``Intel/dpt-hybrid-midas``): the prediction
    resized to the image (bicubic), scaled to 0..255 per image, three channels (diffusers' depth example)."""

    name = "depth"
    controlnets: ClassVar[Mapping[str, str]] = {
        "sd": "lllyasviel/sd-controlnet-depth",
        "sdxl": "diffusers/controlnet-depth-sdxl-1.0",
    }
    needs_model = True
    default_model = "Intel/dpt-hybrid-midas"
    tiny_model = "tiny:depth"

    def __init__(self, model: Any, processor: Any, model_id: str) -> None:
        self.model, self.processor, self.model_id = model, processor, model_id

    @classmethod
    def from_config(cls, config: Any, model: tuple[Any, Any, str] | None = None) -> Control:
        if model is None:
            raise ValueError("--control depth needs a depth-estimation model (--control-model)")
        return cls(*model)

    def params(self) -> dict[str, Any]:
        return {"model": self.model_id}

    def __call__(self, images: Sequence[Image.Image]) -> list[Image.Image]:
        import torch

        out = []
        with torch.no_grad():
            for image in images:  # one at a time: the same map whatever the batch
                inputs = self.processor(images=image.convert("RGB"), return_tensors="pt")
                pixels = inputs["pixel_values"].to(self.model.device, self.model.dtype)
                depth = self.model(pixel_values=pixels).predicted_depth.float()
                depth = torch.nn.functional.interpolate(
                    depth[:, None], size=(image.height, image.width), mode="bicubic", align_corners=False
                )[0, 0]
                low, high = depth.min(), depth.max()
                scaled = (depth - low) / (high - low) if high > low else torch.zeros_like(depth)
                gray = (scaled * 255.0).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
                out.append(Image.fromarray(np.repeat(gray[:, :, None], 3, axis=2)))
        return out


__all__ = ["CONTROLS", "Canny", "Control", "Depth"]
