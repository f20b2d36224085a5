"""Step 2 of SGID (paper §3.2): the textual prompt and its weighting.

The prompt is the textual label l = "A picture of a [label]" joined with the chosen caption c*:
"A picture of a [label], [caption]". Prompt weighting gives l's tokens the weight w_l (1.5) and c*'s tokens w_c
(0.9); start, end, separator and padding tokens keep weight 1. How a weight acts on the text encoding is a
setting (``--weighting``, the registry :data:`WEIGHTINGS`):

``literal`` (default)
    The paper's words, "multiplying the token embeddings of l and c* by w_l and w_c": encode the prompt once
    with the Stable Diffusion text encoder and multiply the output rows of each token by its weight, z·w
    (the words "A picture of a" are part of l, so they are scaled too).
``compel``
    The compel library (``pip install 'sgid[weighting]'``), called with the prompt's fragments and their
    weights: each weighted row moves away from the empty prompt's encoding, empty + (z − empty)·w; for a weight
    below 1 compel also blends (by tan((1 − w)·π/2)) with the encoding of the prompt whose down-weighted words
    are masked out.
``mean-restore``
    diffusers' long-prompt-weighting pipeline: multiply, z·w, then rescale the whole (77, D) encoding so its
    mean equals the unweighted encoding's mean.

Prompt building is plain Python: torch is imported where text is encoded, so settings and methods use this
module without it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sgid.errors import SgidError, require
from sgid.registry import Registry

if TYPE_CHECKING:
    import torch

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


def tokenize(tokenizer: Any, texts: str | list[str], **options: Any) -> Any:
    """A text encoder's input as diffusers makes it: padded to the tokenizer's ``model_max_length``, truncated
    (``options``: e.g. ``return_tensors="pt"``)."""
    return tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, **options)


class PromptEncoder:
    """Encodes prompts with the Stable Diffusion text encoder, weighting label and caption tokens by ``weighting``.

    Plain encoding is exactly diffusers' ``encode_prompt``: pad to ``model_max_length``, truncate, take the
    encoder's last hidden state.
    """

    def __init__(self, tokenizer, text_encoder, weighting: str = "literal", *, hidden_layer: int | None = None) -> None:
        """``weighting``: how (w_l, w_c) act on the encoding (:data:`WEIGHTINGS`). ``hidden_layer``: the hidden
        state that encodes a prompt (None: the encoder's output, as SD 1.x/2.x use; -2: the penultimate layer,
        as SDXL does)."""
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.hidden_layer = hidden_layer
        self.weighting = weighting
        self._apply = WEIGHTINGS.get(weighting)
        self._compel: Any = None

    @property
    def device(self) -> torch.device:
        return next(self.text_encoder.parameters()).device

    def _run(self, texts: list[str]) -> Any:
        tokens = tokenize(self.tokenizer, texts, return_tensors="pt")
        mask = None
        if getattr(self.text_encoder.config, "use_attention_mask", False):
            mask = tokens.attention_mask.to(self.device)
        hidden = self.hidden_layer is not None
        return self.text_encoder(tokens.input_ids.to(self.device), attention_mask=mask, output_hidden_states=hidden)

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        import torch

        with torch.no_grad():
            output = self._run(texts)
            embeds = output[0] if self.hidden_layer is None else output.hidden_states[self.hidden_layer]
            return embeds.to(dtype=self.text_encoder.dtype)

    def pooled_texts(self, texts: list[str]) -> torch.Tensor:
        """(B, P): the encoder's pooled, projected output for the unweighted texts (``text_embeds`` of a
        ``CLIPTextModelWithProjection``: SDXL's second encoder)."""
        import torch

        with torch.no_grad():
            return self._run(texts)[0].to(dtype=self.text_encoder.dtype)

    def token_weights(self, prompt: Prompt, label_weight: float, caption_weight: float) -> torch.Tensor:
        """Per-token weights (length ``model_max_length``): w_l on label tokens, w_c on caption tokens, else 1."""
        import torch

        length = self.tokenizer.model_max_length
        encoded = tokenize(self.tokenizer, prompt.text, return_offsets_mapping=True)
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

    def scales(self, prompts: list[Prompt], weights: list[tuple[float, float]], like: torch.Tensor) -> torch.Tensor:
        """(B, 77, 1) per-token weights, on ``like``'s device and dtype."""
        import torch

        scale = torch.stack([self.token_weights(p, wl, wc) for p, (wl, wc) in zip(prompts, weights, strict=True)])
        return scale.to(like.device, like.dtype).unsqueeze(-1)

    def compel_provider(self) -> Any:
        """compel's embeddings provider over this tokenizer and text encoder (built once)."""
        if self._compel is None:
            embeddings_provider = require("compel.embeddings_provider", "weighting")
            returned = embeddings_provider.ReturnedEmbeddingsType
            layers = {
                None: returned.LAST_HIDDEN_STATES_NORMALIZED,
                -2: returned.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED,
            }
            if self.hidden_layer not in layers:
                raise SgidError(f"--weighting compel reads the last or the penultimate layer, not {self.hidden_layer}")
            dtype = self.text_encoder.dtype
            self._compel = embeddings_provider.EmbeddingsProvider(
                self.tokenizer,
                self.text_encoder,
                dtype_for_device_getter=lambda _device: dtype,
                device=self.device,
                returned_embeddings_type=layers[self.hidden_layer],
            )
        return self._compel

    def encode(self, prompts: list[Prompt], weights: list[tuple[float, float]] | None = None) -> torch.Tensor:
        """(B, 77, D) prompt embeddings with each prompt's (w_l, w_c) applied the ``weighting`` way.

        ``weights`` holds one (w_l, w_c) per prompt; None or (1, 1) is plain encoding, bit for bit.
        """
        if weights is None or all(w == (1.0, 1.0) for w in weights):
            return self.encode_texts([p.text for p in prompts])
        return self._apply(self, prompts, weights)


Weighting = Callable[[PromptEncoder, list[Prompt], list[tuple[float, float]]], "torch.Tensor"]
#: How prompt weights act on the text encoding; the key is the ``--weighting`` value.
WEIGHTINGS: Registry[Weighting] = Registry("--weighting mode")


@WEIGHTINGS.register("literal")
def literal_weighting(
    encoder: PromptEncoder, prompts: list[Prompt], weights: list[tuple[float, float]]
) -> torch.Tensor:
    """z·w: each output row of the text encoder times its token's weight (the paper's wording)."""
    embeds = encoder.encode_texts([p.text for p in prompts])
    return embeds * encoder.scales(prompts, weights, embeds)


@WEIGHTINGS.register("mean-restore")
def mean_restore_weighting(
    encoder: PromptEncoder, prompts: list[Prompt], weights: list[tuple[float, float]]
) -> torch.Tensor:
    """z·w, rescaled so each prompt's encoding keeps its mean (diffusers' long-prompt-weighting pipeline)."""
    embeds = encoder.encode_texts([p.text for p in prompts])
    weighted = embeds * encoder.scales(prompts, weights, embeds)
    before = embeds.float().mean(dim=(1, 2))
    after = weighted.float().mean(dim=(1, 2))
    return weighted * (before / after).to(embeds.dtype).view(-1, 1, 1)


@WEIGHTINGS.register("compel")
def compel_weighting(encoder: PromptEncoder, prompts: list[Prompt], weights: list[tuple[float, float]]) -> torch.Tensor:
    """compel's weighting of the prompt's fragments (label sentence, separator, caption), one prompt at a time."""
    import torch

    provider = encoder.compel_provider()
    rows = []
    with torch.no_grad():
        for prompt, (wl, wc) in zip(prompts, weights, strict=True):
            fragments = prompt_fragments(prompt, wl, wc)
            if all(w == 1.0 for _, w in fragments):
                rows.append(encoder.encode_texts([prompt.text]))
                continue
            rows.append(
                provider.get_embeddings_for_weighted_prompt_fragments(
                    [[text for text, _ in fragments]], [[w for _, w in fragments]], device=encoder.device
                )
            )
    return torch.cat(rows).to(encoder.device, encoder.text_encoder.dtype)


def prompt_fragments(prompt: Prompt, label_weight: float, caption_weight: float) -> list[tuple[str, float]]:
    """The prompt cut at its label and caption spans, with each piece's weight (empty pieces left out).

    >>> prompt_fragments(build_prompt("cat", "a cat on a sofa"), 1.5, 0.9)
    [('A picture of a cat', 1.5), (', ', 1.0), ('a cat on a sofa', 0.9)]
    """
    spans = sorted(
        (span, weight)
        for span, weight in ((prompt.label_span, label_weight), (prompt.caption_span, caption_weight))
        if span[0] < span[1]
    )
    pieces: list[tuple[str, float]] = []
    position = 0
    for (start, end), weight in spans:
        pieces += [(prompt.text[position:start], 1.0), (prompt.text[start:end], weight)]
        position = end
    pieces.append((prompt.text[position:], 1.0))
    return [(text, weight) for text, weight in pieces if text.strip()]


def _inside(token: tuple[int, int], span: tuple[int, int]) -> bool:
    return span[0] < span[1] and span[0] <= token[0] and token[1] <= span[1]
