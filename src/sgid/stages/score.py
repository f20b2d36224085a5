"""CLIP similarity between images and texts (paper §3.1) and between images (filters, metrics).

Similarity is the cosine of the normalised CLIP image and text embeddings: the paper's s*. The ``softmax``
option instead reports each caption's probability among the image's candidate captions (CLIP's logit scale,
softmax over candidates), which sums to 1 over the candidates.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image

from sgid.config import SIMILARITY_MODES
from sgid.errors import SgidError


def _embedding(output) -> torch.Tensor:
    # transformers >= 5 returns an output object whose pooler_output is the projected embedding.
    tensor = output if isinstance(output, torch.Tensor) else output.pooler_output
    return torch.nn.functional.normalize(tensor.float(), dim=-1)


class ClipScorer:
    """Normalised CLIP embeddings and the similarities built from them."""

    def __init__(self, model, processor, batch_size: int = 64) -> None:
        self.model = model
        self.processor = processor
        self.batch_size = batch_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def image_embeddings(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """(N, D) unit-norm image embeddings, float32 on the CPU."""
        dtype = next(self.model.parameters()).dtype
        parts = []
        for start in range(0, len(images), self.batch_size):
            pixels = self.processor(images=list(images[start : start + self.batch_size]), return_tensors="pt")
            output = self.model.get_image_features(pixel_values=pixels.pixel_values.to(self.device, dtype))
            parts.append(_embedding(output).cpu())
        return torch.cat(parts) if parts else torch.empty(0, self.model.config.projection_dim)

    @torch.no_grad()
    def text_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        """(M, D) unit-norm text embeddings, float32 on the CPU; texts longer than CLIP's 77 tokens are cut."""
        parts = []
        for start in range(0, len(texts), self.batch_size):
            tokens = self.processor.tokenizer(
                list(texts[start : start + self.batch_size]),
                padding=True,
                truncation=True,
                max_length=self.processor.tokenizer.model_max_length,
                return_tensors="pt",
            ).to(self.device)
            output = self.model.get_text_features(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
            parts.append(_embedding(output).cpu())
        return torch.cat(parts) if parts else torch.empty(0, self.model.config.projection_dim)

    def caption_similarities(
        self, images: Sequence[Image.Image], captions: Sequence[Sequence[str]], mode: str = "cosine"
    ) -> list[list[float]]:
        """For each image, the similarity of each of its candidate captions."""
        if mode not in SIMILARITY_MODES:
            raise SgidError(f"unknown similarity mode {mode!r}; choose from: {', '.join(SIMILARITY_MODES)}")
        if not images:
            return []
        image_emb = self.image_embeddings(images)
        flat = [text for group in captions for text in group]
        text_emb = self.text_embeddings(flat)
        results: list[list[float]] = []
        offset = 0
        for i, group in enumerate(captions):
            cosine = text_emb[offset : offset + len(group)] @ image_emb[i]
            offset += len(group)
            if mode == "softmax":
                scale = float(self.model.logit_scale.detach().exp())
                cosine = torch.softmax(cosine * scale, dim=0)
            results.append([float(v) for v in cosine])
        return results

    def image_similarity(self, a: Sequence[Image.Image], b: Sequence[Image.Image]) -> list[float]:
        """Pairwise cosine similarity of ``a[i]`` and ``b[i]``."""
        return [float(v) for v in (self.image_embeddings(a) * self.image_embeddings(b)).sum(dim=-1)]
