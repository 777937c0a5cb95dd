"""A byte-level CLIP tokenizer (every byte is a token), written in the standard Hugging Face format.

Used where no trained vocabulary exists: random-init models and the nano family. It handles any
text (no unknown words), and at full size its table is padded to CLIP's 49,408 entries.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

CLIP_VOCAB_SIZE = 49408
CLIP_MAX_LENGTH = 77


def _bytes_to_unicode() -> dict[int, str]:
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes)))


def byte_vocab(size: int | None = None) -> dict[str, int]:
    """Byte tokens, their end-of-word forms, the two specials, then unused fillers up to size."""
    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    if size is not None:
        tokens += [f"<|unused{i}|>" for i in range(size - len(tokens))]
    return {tok: i for i, tok in enumerate(tokens)}


def write_byte_tokenizer(folder: Path, size: int | None = None, max_length: int = CLIP_MAX_LENGTH) -> Path:
    """Write vocab.json, merges.txt and tokenizer_config.json for a byte-level CLIPTokenizer."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(byte_vocab(size)))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "CLIPTokenizer", "model_max_length": max_length})
    )
    return folder


def byte_tokenizer(size: int | None = None, max_length: int = CLIP_MAX_LENGTH):
    """A CLIPTokenizer over bytes, loaded through from_pretrained like any saved tokenizer."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tok = CLIPTokenizer.from_pretrained(write_byte_tokenizer(Path(tmp), size, max_length))
    tok.model_max_length = max_length
    return tok
