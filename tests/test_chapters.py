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


# Targets of {numref}/{ref}: a `:name:` option in markdown, a `name=` in a code cell (markdown_table), a
# `(label)=` target. Sphinx numbers and links them book-wide, so two chapters must not share one.
LABEL = re.compile(r"^:name:\s*(\S+)|\bname=\"([\w-]+)\"|^\(([\w-]+)\)=$", flags=re.M)


def test_cross_reference_labels_are_unique_across_the_book():
    seen: dict[str, str] = {}
    clashes = []
    for path in CHAPTERS:
        nb = nbformat.read(path, as_version=4)
        for label in {next(g for g in m.groups() if g) for c in nb.cells for m in LABEL.finditer(c.source)}:
            if label in seen:
                clashes.append(f"{label!r} in {seen[label]} and {path.name}")
            seen[label] = path.name
    assert seen, "no labels found: the pattern no longer matches the chapters"
    assert not clashes, f"duplicate labels (rename one): {clashes}"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_exercises_close_the_chapter(path):
    """A chapter ends with its Summary and Exercises: a cell inserted after them would print its
    table or figure under the exercises (Chapter 8's meter runs once did). Only a hidden cell that
    records values for the results appendix may follow."""
    nb = nbformat.read(path, as_version=4)
    headings = [(i, m.group(1)) for i, c in enumerate(nb.cells) if c.cell_type == "markdown"
                for m in re.finditer(r"^## (.+)$", c.source, flags=re.M)]
    assert [title for _, title in headings[-2:]] == ["Summary", "Exercises"], \
        f"{path.name}: the last sections are {[t for _, t in headings[-2:]]}"
    for cell in nb.cells[headings[-1][0] + 1:]:
        assert cell.cell_type == "code" and "remove-input" in cell.metadata.get("tags", []), \
            f"{path.name}: a visible cell follows the exercises: {cell.source[:60]!r}"
        assert not re.search(r"\b(display|print)\(|\bplt\.|\.plot\(", cell.source), \
            f"{path.name}: a cell after the exercises shows output: {cell.source[:60]!r}"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_figures_are_finished_where_they_are_drawn(path):
    """Jupyter's inline backend prints every open figure at the end of the cell that drew it.
    A figure opened in a cell whose output shows and finished in a later hidden cell is
    printed half-drawn, without its axes' labels or legend (Chapters 4 and 7 once did);
    a cell that opens a figure must close it."""
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if cell.cell_type != "code" or {"remove-output", "remove-cell"} & set(tags):
            continue
        if re.search(r"\bplt\.(subplots|figure)\(", cell.source):
            assert "plt.close(" in cell.source, \
                f"{path.name}: cell {cell.get('id')} opens a figure it does not close " \
                f"(finish and close it in the same cell): {cell.source[:60]!r}"
