"""What a model was trained to do: the edits its manifest lists, and how close an instruction is to them.

A model folder's movie.json may hold `"edits": {name: [training phrasings]}` (the built-in nano models do:
the twelve procedural edits and the phrasings of their training split). For such a model `movie edit`
warns, in one line, when an instruction is far from every training phrasing, and names the closest edits.

Closeness is word overlap, deliberately simple: an instruction and a phrasing are lower-cased and split
into words; words that tell no edit apart are dropped (STOP_WORDS, and any word the phrasings of
GENERIC_EDITS or more edits use, such as "make", "it", "look", "like"); a word of the instruction
matches a word of the phrasing when difflib's ratio of the two is at least WORD_MATCH (so "greyscale"
matches "grayscale"). The score is the Dice coefficient 2 * matched / (words of the instruction +
words of the phrasing); an edit scores its best phrasing. Below NEAR the instruction is "far".
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

STOP_WORDS = frozenset(
    "a an the it its this that of to in into on and or with for please image images video videos clip footage "
    "frame frames picture photo shot".split()
)
GENERIC_EDITS = 3  # a word used by this many edits' phrasings names none of them
WORD_MATCH = 0.8  # difflib ratio at which two words count as the same (spelling variants, plurals)
NEAR = 0.5  # an edit scoring at least this is close enough: no warning

Edits = Mapping[str, Sequence[str]]


def read_edits(model: str | Path | None) -> dict[str, list[str]] | None:
    """The edits a model folder's manifest lists ({name: training phrasings}), or None when it lists none."""
    from movie_core.weights import read_manifest

    if model is None or not Path(model).is_dir():
        return None
    edits = (read_manifest(Path(model)) or {}).get("edits")
    if not isinstance(edits, dict) or not edits:
        return None
    return {str(name): [str(p) for p in phrasings] for name, phrasings in edits.items()}


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def generic_words(edits: Edits) -> frozenset[str]:
    """STOP_WORDS and the words GENERIC_EDITS or more edits' phrasings use."""
    users: dict[str, set[str]] = {}
    for name, phrasings in edits.items():
        for phrasing in phrasings:
            for word in _words(phrasing):
                users.setdefault(word, set()).add(name)
    return STOP_WORDS | {word for word, names in users.items() if len(names) >= GENERIC_EDITS}


def _content(text: str, generic: frozenset[str]) -> list[str]:
    return [w for w in dict.fromkeys(_words(text)) if w not in generic]


def similarity(instruction: str, phrasing: str, generic: frozenset[str] = STOP_WORDS) -> float:
    """Dice coefficient of the two texts' telling words, a word matching a close spelling (see the module doc)."""
    mine, theirs = _content(instruction, generic), _content(phrasing, generic)
    if not mine or not theirs:
        return 0.0
    matched = sum(any(difflib.SequenceMatcher(None, w, t).ratio() >= WORD_MATCH for t in theirs) for w in mine)
    return 2 * matched / (len(mine) + len(theirs))


def closest(instruction: str, edits: Edits, count: int = 3) -> list[dict[str, Any]]:
    """The `count` edits nearest to an instruction, best first: {"edit", "score", "phrasing"} (its best phrasing).
    Ties (no shared word at all, say) go to the phrasing with the higher difflib ratio as whole strings."""
    generic = generic_words(edits)
    text = " ".join(_words(instruction))
    ranked: list[tuple[float, float, str, str]] = []
    for name, phrasings in edits.items():
        best = max(((similarity(instruction, p, generic), difflib.SequenceMatcher(None, text, " ".join(_words(p)))
                     .ratio(), name, p) for p in phrasings), default=None)
        if best is not None:
            ranked.append(best)
    ranked.sort(key=lambda r: (-r[0], -r[1]))
    return [{"edit": name, "score": round(score, 3), "phrasing": p} for score, _, name, p in ranked[:count]]


def far_warning(instruction: str, edits: Edits) -> str | None:
    """The one warning line for an instruction far from every training phrasing (None when one is near)."""
    near = closest(instruction, edits)
    if not near or near[0]["score"] >= NEAR:
        return None
    names = ", ".join(f"{r['edit']} ('{r['phrasing']}')" for r in near)
    return (f"'{instruction.strip()}' is far from every instruction the model was trained on; closest edits: "
            f"{names}; running it anyway (`movie list --edits` lists what it knows)")
