"""Learned concepts: ``sgid learn-concepts`` (textual inversion per class, or DreamBooth-LoRA on all classes with
one token each) and using them, or LoRA weights made elsewhere, for generation.

==================  =========================================================================================
``tokens``          token names (``<sgid-golden_retriever>``) and the init-token rule
``data``            seeded training batches (crop, flip, template prompts): one class, or all classes + priors
``trainer``         shared pieces (token rows, denoising loss, AdamW state) and :class:`ConceptTrainer`
``lora``            :class:`LoraSettings`, :class:`LoraTrainer`: LoRA + class tokens, diffusers' LoRA format
``prior``           rendering with the training parts; prior-preservation class images, stored and reused
``monitor``         loss log, loss curve, sample images at checkpoints
``store``           the concepts directory: ``concepts.json``, embeddings, checkpoints, resume
``method``          the ``--method`` registry, the step loop, class images
``learn``           :func:`learn_concepts` and ``--method textual_inversion``
``joint``           ``--method lora``: every class at once, resumable
``apply``           :func:`load_concepts`, :func:`apply_concepts`, :func:`apply_lora`, :func:`prepare_pipeline`
==================  =========================================================================================
"""

from sgid.concepts.apply import (
    Prepared,
    apply_concepts,
    apply_lora,
    concepts_fingerprint,
    fork_pipeline,
    load_concepts,
    lora_fingerprint,
    prepare_pipeline,
)
from sgid.concepts.learn import LearnSummary, learn_concepts
from sgid.concepts.lora import LoraSettings, LoraState, LoraTrainer
from sgid.concepts.method import CONCEPT_METHODS
from sgid.concepts.store import CONCEPTS_FILE
from sgid.concepts.tokens import concept_token, concept_tokens
from sgid.concepts.trainer import ConceptTrainer, DiffusionParts, TrainSettings, TrainState

__all__ = [
    "CONCEPTS_FILE",
    "CONCEPT_METHODS",
    "ConceptTrainer",
    "DiffusionParts",
    "LearnSummary",
    "LoraSettings",
    "LoraState",
    "LoraTrainer",
    "Prepared",
    "TrainSettings",
    "TrainState",
    "apply_concepts",
    "apply_lora",
    "concept_token",
    "concept_tokens",
    "concepts_fingerprint",
    "fork_pipeline",
    "learn_concepts",
    "load_concepts",
    "lora_fingerprint",
    "prepare_pipeline",
]
