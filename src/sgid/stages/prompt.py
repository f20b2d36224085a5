"""Step 2 of SGID (paper §3.2): the textual prompt and its weighting.

The prompt is the textual label l = "A picture of a [label]" joined with the chosen caption c*:
"A picture of a [label], [caption]". Prompt weighting follows the paper's wording: encode the prompt once with
the Stable Diffusion text encoder, then multiply the output rows of l's tokens by w_l (1.5) and of c*'s tokens
by w_c (0.9). Start, end, separator and padding rows are left as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from sgid.errors import SgidError

PROMPT_MODES = ("complete", "label", "caption", "none")
DEFAULT_LABEL_TEMPLATE = "A picture of a {label}"
SEPARATOR = ", "


@dataclass(frozen=True)
class Prompt:
    """A prompt and the character spans of its two parts (empty spans when a part is absent)."""

    text: str
    label_span: tuple[int, int]
    caption_span: tuple[int, int]


def label_sentence(label: str, template: str = DEFAULT_LABEL_TEMPLATE) -> str:
    if "{label}" not in template:
        raise SgidError(f"the label template must contain {{label}}: {template!r}")
    return template.replace("{label}", label)


def build_prompt(
    label: str, caption: str | None, mode: str = "complete", template: str = DEFAULT_LABEL_TEMPLATE
) -> Prompt:
    """The paper's prompt, or its ablations (table 3): ``complete``, ``label`` only, ``caption`` only, ``none``.

    >>> build_prompt("cat", "a cat on a sofa").text
    'A picture of a cat, a cat on a sofa'
    >>> build_prompt("cat", "a cat on a sofa", "label").text
    'A picture of a cat'
    """
    if mode not in PROMPT_MODES:
        raise SgidError(f"unknown prompt mode {mode!r}; choose from: {', '.join(PROMPT_MODES)}")
    if mode in ("complete", "caption") and not caption:
        raise ValueError(f"prompt mode {mode!r} needs a caption")
    sentence = label_sentence(label, template)
    if mode == "complete":
        assert caption is not None
        text = sentence + SEPARATOR + caption
        return Prompt(text, (0, len(sentence)), (len(text) - len(caption), len(text)))
    if mode == "label":
        return Prompt(sentence, (0, len(sentence)), (0, 0))
    if mode == "caption":
        assert caption is not None
        return Prompt(caption, (0, 0), (0, len(caption)))
    return Prompt("", (0, 0), (0, 0))


class PromptEncoder:
    """Encodes prompts with the Stable Diffusion text encoder, optionally weighting label and caption rows.

    Plain encoding is exactly diffusers' ``encode_prompt``: pad to ``model_max_length``, truncate, take the
    encoder's last hidden state.
    """

    def __init__(self, tokenizer, text_encoder, *, hidden_layer: int | None = None) -> None:
        """``hidden_layer``: the hidden state that encodes a prompt (None: the encoder's output, as SD 1.x/2.x
        use; -2: the penultimate layer, as SDXL does)."""
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.hidden_layer = hidden_layer

    @property
    def device(self) -> torch.device:
        return next(self.text_encoder.parameters()).device

    def _run(self, texts: list[str]) -> Any:
        tokens = self.tokenizer(
            texts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        mask = None
        if getattr(self.text_encoder.config, "use_attention_mask", False):
            mask = tokens.attention_mask.to(self.device)
        hidden = self.hidden_layer is not None
        return self.text_encoder(tokens.input_ids.to(self.device), attention_mask=mask, output_hidden_states=hidden)

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        output = self._run(texts)
        embeds = output[0] if self.hidden_layer is None else output.hidden_states[self.hidden_layer]
        return embeds.to(dtype=self.text_encoder.dtype)

    @torch.no_grad()
    def pooled_texts(self, texts: list[str]) -> torch.Tensor:
        """(B, P): the encoder's pooled, projected output for the unweighted texts (``text_embeds`` of a
        ``CLIPTextModelWithProjection``: SDXL's second encoder)."""
        return self._run(texts)[0].to(dtype=self.text_encoder.dtype)

    def token_weights(self, prompt: Prompt, label_weight: float, caption_weight: float) -> torch.Tensor:
        """Per-token multipliers (length ``model_max_length``): w_l on label tokens, w_c on caption tokens."""
        length = self.tokenizer.model_max_length
        encoded = self.tokenizer(
            prompt.text,
            padding="max_length",
            max_length=length,
            truncation=True,
            return_offsets_mapping=True,
        )
        weights = torch.ones(length)
        special = set(self.tokenizer.all_special_ids)
        for position, (token, (start, end)) in enumerate(
            zip(encoded["input_ids"], encoded["offset_mapping"], strict=True)
        ):
            if token in special or end <= start:
                continue
            if _inside((start, end), prompt.label_span):
                weights[position] = label_weight
            elif _inside((start, end), prompt.caption_span):
                weights[position] = caption_weight
        return weights

    def encode(self, prompts: list[Prompt], weights: list[tuple[float, float]] | None = None) -> torch.Tensor:
        """(B, 77, D) prompt embeddings, each prompt's label rows × w_l and caption rows × w_c.

        ``weights`` holds one (w_l, w_c) per prompt; None or (1, 1) is plain encoding, bit for bit.
        """
        embeds = self.encode_texts([p.text for p in prompts])
        if weights is None or all(w == (1.0, 1.0) for w in weights):
            return embeds
        scale = torch.stack([self.token_weights(p, wl, wc) for p, (wl, wc) in zip(prompts, weights, strict=True)])
        return embeds * scale.to(embeds.device, embeds.dtype).unsqueeze(-1)


def _inside(token: tuple[int, int], span: tuple[int, int]) -> bool:
    return span[0] < span[1] and span[0] <= token[0] and token[1] <= span[1]
