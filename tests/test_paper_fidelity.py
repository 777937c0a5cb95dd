"""The distillers' defaults equal the paper values listed in docs/paper_fidelity.md (issue 28)."""

from __future__ import annotations

import re
from pathlib import Path

import attrs
import pytest

from movie_core import plugins

DOC = Path(__file__).resolve().parent.parent / "docs" / "paper_fidelity.md"
LOOP_SETTINGS = {"lr", "warmup_steps"}  # the training loop's, defaulted by the distiller class's `defaults`


def paper_rows() -> list[tuple[str, str, str]]:
    """(distiller, setting, paper value) for each row of the 'Paper values' table."""
    text = DOC.read_text()
    section = text.split("## Paper values", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and re.fullmatch(r"[a-z][a-z0-9-]*", cells[0]) and cells[0] != "distiller":
            rows.append((cells[0], cells[1], cells[2]))
    return rows


def test_the_table_lists_every_builtin_distiller():
    listed = {d for d, _, _ in paper_rows()}
    assert {"mmg", "vpred", "adversarial", "pix2pix-finetune"} <= listed


def _default(distiller: str, setting: str):
    spec = plugins.get_registry().get("distiller", distiller)
    if setting in LOOP_SETTINGS:
        cls = spec.load_factory()
        assert setting in cls.defaults, f"{distiller} has no default {setting} (the loop's would apply)"
        return cls.defaults[setting]
    fields = {f.name: f for f in attrs.fields(spec.config)}
    assert setting in fields, f"{distiller} has no option {setting}"
    return fields[setting].default


@pytest.mark.parametrize(("distiller", "setting", "paper"), paper_rows(), ids=lambda v: str(v))
def test_default_equals_the_paper(distiller, setting, paper):
    ours = _default(distiller, setting)
    if isinstance(ours, str) or ours is None:
        assert str(ours) == paper
    else:
        assert float(ours) == pytest.approx(float(paper), rel=1e-12), f"{distiller}.{setting}: {ours} != {paper}"
