"""Learned concepts: textual inversion per class (``sgid learn-concepts``) and LoRA weights for generation.

==================  =========================================================================================
``tokens``          token names (``<sgid-golden_retriever>``) and the init-token rule
``data``            a class's images as seeded training batches (crop, flip, template prompts)
``trainer``         :class:`ConceptTrainer`: one token's textual inversion, on models passed in
``store``           the concepts directory: ``concepts.json``, embeddings, checkpoints, resume
``learn``           :func:`learn_concepts`: every class of an image folder, resumable
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
from sgid.concepts.store import CONCEPTS_FILE
from sgid.concepts.tokens import concept_token, concept_tokens
from sgid.concepts.trainer import ConceptTrainer, DiffusionParts, TrainSettings, TrainState

__all__ = [
    "CONCEPTS_FILE",
    "ConceptTrainer",
    "DiffusionParts",
    "LearnSummary",
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
