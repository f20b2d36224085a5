"""Text generation with a local language model, reproducible per item.

Used for the "language enhancement" of Text2Img (He et al.; ``seeds/004``: "Describe what a {label} looks
like"), for summarising a label's captions into domain descriptions (ALIA's idea, used by
SGID+DiverseCaption) and for writing edit instructions (SGID+InstructPix2Pix). Sampling uses the same
Gumbel-max construction as the captioner, so each text depends only on its prompt and seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

from sgid.seeding import derive_seed, generator
from sgid.stages.caption import GumbelSampler


@dataclass(frozen=True)
class TextSettings:
    max_new_tokens: int = 20  # seeds/004: GPT-3 with max 20 tokens
    min_new_tokens: int = 3
    temperature: float = 0.99  # seeds/004: temperature 0.99
    top_p: float = 0.9


class TextGenerator:
    """``generate(prompt, n, seed)``: n sampled continuations of one prompt, one seeded stream each."""

    def __init__(self, model, tokenizer, settings: TextSettings = TextSettings()) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings

    @torch.no_grad()
    def generate(self, prompt: str, n: int, seed: int) -> list[str]:
        s = self.settings
        tokens = self.tokenizer([prompt] * n, return_tensors="pt").to(next(self.model.parameters()).device)
        processors = LogitsProcessorList(
            [
                TemperatureLogitsWarper(s.temperature),
                TopPLogitsWarper(s.top_p),
                GumbelSampler([generator(derive_seed(seed, "text", j)) for j in range(n)]),
            ]
        )
        output = self.model.generate(
            **tokens,
            do_sample=False,
            num_beams=1,
            max_new_tokens=s.max_new_tokens,
            min_new_tokens=s.min_new_tokens,
            logits_processor=processors,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        continuations = self.tokenizer.batch_decode(output[:, tokens.input_ids.shape[1] :], skip_special_tokens=True)
        return [first_line(text) for text in continuations]


def first_line(text: str) -> str:
    """The first non-empty line, whitespace collapsed (a model's continuation often runs on)."""
    for line in text.splitlines():
        if line.strip():
            return " ".join(line.split())
    return ""
