"""The chapter notebooks as stored in git: output-free, parameterised, titled for the book."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

CHAPTERS = sorted((Path(__file__).resolve().parents[1] / "chapters").glob("[0-9][0-9]_*.ipynb"))
TOC = (Path(__file__).resolve().parents[1] / "_toc.yml").read_text()


def test_there_are_chapters():
    assert CHAPTERS


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_chapter_is_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not dirty, f"{path.name}: cells {dirty} have outputs; clear them before committing"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_chapter_has_a_title_parameters_and_a_profile(path):
    nb = nbformat.read(path, as_version=4)
    title = re.match(r"# (.+)", nb.cells[0].source)
    assert nb.cells[0].cell_type == "markdown" and title, "first cell: '# Title'"
    assert not title.group(1).lower().startswith("chapter"), "LaTeX numbers chapters; the title has no number"
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and params[0].source.strip() == 'profile = "cpu"'
    assert any("profiles.start(profile)" in c.source for c in nb.cells if c.cell_type == "code")
    assert f"chapters/{path.stem}" in TOC, f"{path.name} is missing from _toc.yml"
