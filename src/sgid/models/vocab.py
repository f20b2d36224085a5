"""A small local vocabulary for the tiny models' tokenizers (no downloads).

The word list covers the prompts and captions the tiny preset sees; anything else still tokenizes (CLIP's byte
alphabet, BERT's single characters and ``##`` pieces), just into more pieces.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

WORDS = """
a an the of in on at with and or is are to from by for it its this that picture photo image hq high quality
there two three one some close up view small large big little white black red green blue yellow brown gray grey
orange pink purple dark light old new man woman person people child dog cat bird car truck plane airplane ship
boat horse deer frog flower flowers tree trees grass gravel brick wall road street sky water field forest desert
snow night day sitting standing laying lying walking flying parked next near top front background table floor
cup coffee rocket motorcycle astronaut space suit texture pattern surface stone rock ground pile pet animal
fluffy furry puppy kitten stuffed toy make it snowy put place describe what looks like how can you identify
banded zigzagged orchid lily shiba inu abyssinian chevrolet silverado desert cars cab extended
""".split()


def byte_alphabet() -> list[str]:
    """The 256 printable stand-ins for bytes used by byte-level BPE (GPT-2, CLIP)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    mapping = {b: b for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = 256 + extra
            extra += 1
    return [chr(mapping[b]) for b in range(256)]


def _byte_bpe(symbols_of, specials: list[str]) -> tuple[dict[str, int], list[str]]:
    """A byte-level BPE vocabulary and merge list that spells every word of :data:`WORDS` as one token.

    ``symbols_of(word)`` gives the word's initial symbols (CLIP: characters with ``</w>`` on the last; GPT-2:
    ``Ġ`` for the leading space, then characters); merges join them left to right.
    """
    tokens = list(dict.fromkeys(symbols_of("")))
    merges: list[str] = []
    seen = set(tokens)
    for word in dict.fromkeys(WORDS):
        symbols = symbols_of(word)
        while len(symbols) > 1:
            first, second = symbols[0], symbols[1]
            if f"{first} {second}" not in merges:
                merges.append(f"{first} {second}")
            if first + second not in seen:
                seen.add(first + second)
                tokens.append(first + second)
            symbols = [first + second, *symbols[2:]]
    return {t: i for i, t in enumerate(tokens + specials)}, merges


def _write_bpe(folder: Path, vocab: dict[str, int], merges: list[str]) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    vocab_file, merges_file = folder / "vocab.json", folder / "merges.txt"
    vocab_file.write_text(json.dumps(vocab), encoding="utf-8")
    merges_file.write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return vocab_file, merges_file


def clip_vocab_files(folder: Path) -> tuple[Path, Path]:
    """Write ``vocab.json`` and ``merges.txt`` for a byte-level BPE CLIP tokenizer over :data:`WORDS`."""
    alphabet = byte_alphabet()

    def symbols(word: str) -> list[str]:
        if not word:  # the base alphabet: every byte, bare and word-final
            return alphabet + [c + "</w>" for c in alphabet]
        return list(word[:-1]) + [word[-1] + "</w>"]

    return _write_bpe(folder, *_byte_bpe(symbols, ["<|startoftext|>", "<|endoftext|>"]))


def bert_vocab_file(folder: Path) -> Path:
    """Write a WordPiece ``vocab.txt`` for the tiny BLIP tokenizer, with BLIP's ``[DEC]`` start token."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    tokens = (
        specials
        + chars
        + ["##" + c for c in string.ascii_lowercase + string.digits]
        + list(dict.fromkeys(w for w in WORDS if w not in chars))
    )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "vocab.txt"
    path.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return path


def gpt2_vocab_files(folder: Path) -> tuple[Path, Path]:
    """Write ``vocab.json`` and ``merges.txt`` for a byte-level BPE GPT-2 tokenizer over :data:`WORDS`.

    GPT-2 marks a word's leading space with the byte stand-in ``Ġ`` instead of CLIP's ``</w>`` suffix.
    """
    alphabet = byte_alphabet()
    space = alphabet[ord(" ")]

    def symbols(word: str) -> list[str]:
        return [space, *word] if word else alphabet

    return _write_bpe(folder, *_byte_bpe(symbols, ["<|endoftext|>"]))
