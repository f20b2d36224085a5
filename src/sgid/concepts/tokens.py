"""Names of the learned tokens and the word each one starts from.

A class folder ``golden_retriever`` gets the token ``<sgid-golden_retriever>``. CLIP's tokenizer lower-cases
text before it looks for added tokens, so tokens are lower case and use only ``a-z 0-9 _ -``; two folders that
would collide (``Cat`` and ``cat``) get ``<sgid-cat>`` and ``<sgid-cat-2>`` in sorted folder order.

The new token's embedding starts as a copy of one existing token's embedding (the *init token*), as in
diffusers' textual inversion example, which requires it to be a single token. Unless ``--init-token`` is given,
it is the label's last word when that is one token (``golden retriever`` -> ``retriever``: the head noun says
most about the class), else ``object``, else ``the`` (DA-Fusion's choice; every CLIP vocabulary has it as one
token, the tiny test vocabulary included).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from sgid.errors import SgidError

TOKEN_PREFIX = "<sgid-"
FALLBACK_INIT_TOKENS = ("object", "the")


def concept_token(class_name: str) -> str:
    """The token for a class folder.

    >>> concept_token("golden_retriever")
    '<sgid-golden_retriever>'
    >>> concept_token("Crème brûlée!")
    '<sgid-cr_me_br_l_e>'
    """
    stem = re.sub(r"[^a-z0-9_-]+", "_", class_name.lower()).strip("_") or "class"
    return f"{TOKEN_PREFIX}{stem}>"


def concept_tokens(class_names: Sequence[str]) -> dict[str, str]:
    """One distinct token per class folder (sorted order decides which of two colliding names gets a suffix).

    >>> concept_tokens(["cat", "Cat"])
    {'Cat': '<sgid-cat>', 'cat': '<sgid-cat-2>'}
    """
    tokens: dict[str, str] = {}
    used: set[str] = set()
    for name in sorted(class_names):
        token, number = concept_token(name), 1
        while token in used:
            number += 1
            token = f"{concept_token(name)[:-1]}-{number}>"
        tokens[name] = token
        used.add(token)
    return tokens


def single_token_id(tokenizer: Any, word: str) -> int | None:
    """The id of ``word`` when the tokenizer encodes it as exactly one token, else None."""
    ids = tokenizer.encode(word, add_special_tokens=False)
    return int(ids[0]) if len(ids) == 1 else None


def choose_init_token(tokenizer: Any, label: str, explicit: str | None = None) -> str:
    """The word whose embedding the new token starts from (see the module docstring for the rule)."""
    if explicit is not None:
        if single_token_id(tokenizer, explicit) is None:
            pieces = tokenizer.tokenize(explicit)
            raise SgidError(
                f"--init-token {explicit!r} is {len(pieces)} tokens for this model's tokenizer ({' '.join(pieces)}); "
                f"choose a word that is a single token, e.g. 'object'"
            )
        return explicit
    words = label.split()
    for candidate in ([words[-1]] if words else []) + list(FALLBACK_INIT_TOKENS):
        if single_token_id(tokenizer, candidate) is not None:
            return candidate
    raise SgidError(
        f"none of {', '.join(FALLBACK_INIT_TOKENS)} is a single token for this tokenizer; pass --init-token WORD"
    )
