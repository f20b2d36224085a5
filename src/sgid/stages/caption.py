"""Step 1 of SGID (paper §3.1): caption each image with BLIP, by beam search and by nucleus sampling.

Both decodings are batched across images. Nucleus sampling is made reproducible per image: Hugging Face's
``generate(do_sample=True)`` draws every row from one shared random stream, so instead we decode greedily over
logits that have been nucleus-filtered and perturbed with Gumbel noise from one generator per row. The argmax
of ``logits + Gumbel`` is an exact sample from ``softmax(logits)`` (the Gumbel-max trick), so this *is* nucleus
sampling, but each caption depends only on its own image and seed, never on its batch.
"""

from __future__ import annotations

import torch
from PIL import Image
from transformers import LogitsProcessor, LogitsProcessorList, TopKLogitsWarper, TopPLogitsWarper

from sgid.config import CaptionSettings
from sgid.sample import Caption
from sgid.seeding import derive_seed, generator

__all__ = ["Caption", "CaptionSettings", "Captioner", "GumbelSampler"]  # the records and settings live elsewhere

PAPER_SETTINGS = CaptionSettings()  # the paper's decoding settings (the defaults)


class GumbelSampler(LogitsProcessor):
    """Adds Gumbel(0, 1) noise drawn from one generator per row, turning greedy decoding into sampling."""

    def __init__(self, generators: list[torch.Generator]) -> None:
        self.generators = generators

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if scores.shape[0] != len(self.generators):
            raise RuntimeError(f"{scores.shape[0]} rows but {len(self.generators)} generators")
        vocab = scores.shape[-1]
        tiny = torch.finfo(torch.float32).tiny
        uniform = torch.stack([torch.rand(vocab, generator=g) for g in self.generators])
        gumbel = -torch.log(-torch.log(uniform.clamp(min=tiny, max=1.0 - 1e-7)))
        return scores.float() + gumbel.to(scores.device)  # type: ignore[return-value]


class Captioner:
    """BLIP captioner: ``captioner(images, seeds)`` returns beam and nucleus captions for every image."""

    def __init__(self, model, processor, settings: CaptionSettings = PAPER_SETTINGS) -> None:
        self.model = model
        self.processor = processor
        self.settings = settings

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def __call__(self, images: list[Image.Image], seeds: list[int]) -> list[list[Caption]]:
        if len(images) != len(seeds):
            raise ValueError("one seed per image")
        if not images:
            return []
        s = self.settings
        dtype = next(self.model.parameters()).dtype
        pixel_values = self.processor(images=images, return_tensors="pt").pixel_values.to(self.device, dtype)
        image_embeds = self.model.vision_model(pixel_values=pixel_values)[0]
        captions: list[list[Caption]] = [[] for _ in images]
        if s.beam_captions:
            texts = self._decode(
                image_embeds,
                s.beam_captions,
                num_beams=s.num_beams,
                num_return_sequences=s.beam_captions,
            )
            for i, chunk in enumerate(_chunks(texts, s.beam_captions)):
                captions[i] += [Caption(t, "beam") for t in chunk]
        if s.nucleus_captions:
            n = s.nucleus_captions
            generators = [generator(derive_seed(seed, "nucleus", j)) for seed in seeds for j in range(n)]
            processors = LogitsProcessorList()
            if s.top_k:
                processors.append(TopKLogitsWarper(top_k=s.top_k))
            processors.append(TopPLogitsWarper(top_p=s.top_p))
            processors.append(GumbelSampler(generators))
            texts = self._decode(image_embeds, n, num_beams=1, logits_processor=processors)
            for i, chunk in enumerate(_chunks(texts, n)):
                captions[i] += [Caption(t, "nucleus") for t in chunk]
        return captions

    def _decode(self, image_embeds: torch.Tensor, copies: int, **kwargs) -> list[str]:
        """Run BLIP's text decoder as ``BlipForConditionalGeneration.generate`` does, from given image embeddings."""
        s = self.settings
        config = self.model.config.text_config
        if kwargs.get("num_beams", 1) == 1:
            # Greedy decoding returns one sequence per row: give each caption its own row.
            image_embeds = image_embeds.repeat_interleave(copies, dim=0)
        batch = image_embeds.shape[0]
        input_ids = torch.full((batch, 1), config.bos_token_id, dtype=torch.long, device=image_embeds.device)
        attention = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        output = self.model.text_decoder.generate(
            input_ids=input_ids,
            eos_token_id=config.sep_token_id,
            pad_token_id=config.pad_token_id,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=attention,
            do_sample=False,
            min_length=s.min_length,
            max_length=s.max_length,
            repetition_penalty=s.repetition_penalty,
            **kwargs,
        )
        return [" ".join(t.split()) for t in self.processor.batch_decode(output, skip_special_tokens=True)]


def _chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
