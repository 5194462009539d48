"""What the build says and stages for the HTML edition: why a chapter runs, setup cells folded
in HTML, each script once per page; and how the PDF's tables share the line between columns.
No kernel is started here (the chapters are fabricated)."""

from __future__ import annotations

import importlib.util
import re

import nbformat
import pytest

from llmbook import build
from llmbook.paths import REPO_ROOT


def _source(path, *cells):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("profile = 'cpu'", metadata={"tags": ["parameters"]})]
    nb.cells += [nbformat.v4.new_code_cell(source) for source in cells]
    nbformat.write(nb, path)
    return path


def _executed(stage, source, profile, package, *, record_parts=True):
    """An executed copy as execute_chapter writes it (without running anything)."""
    nb = nbformat.read(source, as_version=4)
    meta = {"key": build.execution_key(source, profile, package)}
    if record_parts:
        meta.update(notebook=build._notebook_digest(source), package=package, profile=profile)
    nb.metadata["llmbook"] = meta
    nbformat.write(nb, stage / "stage" / "chapters" / source.name)


@pytest.fixture
def stage(tmp_path, monkeypatch):
    (tmp_path / "stage" / "chapters").mkdir(parents=True)
    monkeypatch.setattr(build, "stage_dir", lambda profile: tmp_path / "stage")
    return tmp_path


def test_stale_reason_names_what_changed(stage):
    source = _source(stage / "01_a.ipynb", "x = 1")
    assert build.stale_reason(source, "cpu", "pkg") == "not executed yet"
    _executed(stage, source, "cpu", "pkg")
    assert build.stale_reason(source, "cpu", "pkg") is None
    assert build.stale_reason(source, "cpu", "pkg2") == "package changed"
    assert build.stale_reason(source, "gpu", "pkg") == "profile changed"
    _source(source, "x = 2")
    assert build.stale_reason(source, "cpu", "pkg2") == "notebook and package changed"
    _executed(stage, source, "cpu", "pkg", record_parts=False)  # a copy from an older build
    assert build.stale_reason(source, "cpu", "pkg") is None
    assert build.stale_reason(source, "cpu", "new") == "notebook, package or profile changed"


def test_execute_says_which_chapters_run_and_why(stage, monkeypatch, capsys):
    fresh = _source(stage / "01_fresh.ipynb", "x = 1")
    changed = _source(stage / "02_changed.ipynb", "y = 1")
    _executed(stage, fresh, "cpu", "pkg")
    _executed(stage, changed, "cpu", "old")
    ran = []
    monkeypatch.setattr(build, "prepare_stage", lambda profile: stage / "stage")
    monkeypatch.setattr(build, "chapter_sources", lambda: [fresh, changed])
    monkeypatch.setattr(build, "package_digest", lambda: "pkg")
    monkeypatch.setattr(build, "execute_chapter",
                        lambda source, profile, package, force: ran.append(source.name) or ("executed", 2.5))
    build.execute("cpu")
    out = capsys.readouterr().out
    assert ran == ["02_changed.ipynb"]
    assert "1 of 2 chapters to execute" in out
    assert "01_fresh.ipynb: up to date" in out
    assert "01_fresh.ipynb: executing" not in out  # no "executing" for a chapter that does not run
    assert "02_changed.ipynb: executing (package changed)" in out
    assert "02_changed.ipynb: executed in 2.5 s" in out
    assert f"executed notebooks: {stage / 'stage' / 'chapters'}" in out


def test_setup_cell_is_tagged_once(stage):
    path = stage / "stage" / "chapters" / "01_a.ipynb"
    _source(path, "import numpy", "print(1)")
    build.tag_setup_cells("cpu")
    build.tag_setup_cells("cpu")  # idempotent: every render runs it
    cells = nbformat.read(path, as_version=4).cells
    assert cells[0].metadata["tags"] == ["parameters"]
    assert cells[1].metadata["tags"] == ["hide-input", "remove-stderr"]
    assert "tags" not in cells[2].metadata


def _extension(name: str):
    """One of the book's Sphinx extensions (book/_ext is not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "book" / "_ext" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_inline_script_registered_twice_is_written_once():
    from sphinx.builders.html._assets import _JavaScript

    body = 'const THEBE_JS_URL = "x"'
    scripts = [_JavaScript("_static/doctools.js"), _JavaScript("", body=body),
               _JavaScript("_static/sphinx-thebe.js", **{"async": "async"}),
               _JavaScript(None, body=body), _JavaScript("", body="let other = 1")]
    unique = _extension("llmbook_html").unique_scripts(scripts)
    assert unique == [scripts[0], scripts[1], scripts[2], scripts[4]]


def test_root_redirect_gets_the_books_icon_and_a_link(tmp_path):
    """Jupyter Book's root index.html is a bare meta refresh: the browser then asks the server
    for /favicon.ico (a 404 in the reader's console). The build completes it, once."""
    index = tmp_path / "index.html"
    index.write_text('<meta http-equiv="Refresh" content="0; url=book/preface.html" />')
    build._complete_redirect(index)
    first = index.read_text()
    assert '<link rel="icon" href="_static/favicon.svg"' in first
    assert '<meta http-equiv="refresh" content="0; url=book/preface.html">' in first
    assert '<a href="book/preface.html">' in first and "<title>" in first
    build._complete_redirect(index)  # idempotent: the completed page still redirects there
    assert index.read_text() == first
    real_page = "<html><body><p>a root document that is a page</p></body></html>"
    index.write_text(real_page)
    build._complete_redirect(index)
    assert index.read_text() == real_page


def test_refresh_target_reads_the_redirect_as_written():
    assert build.refresh_target('<META HTTP-EQUIV="refresh" content="5; url=../a b.html">') \
        == "../a b.html"
    assert build.refresh_target('<meta name="viewport" content="width=device-width">') is None


def _table(rst: str):
    from docutils import nodes
    from docutils.core import publish_doctree

    return publish_doctree(rst, settings_overrides={"report_level": 4}).next_node(nodes.table)


def test_pdf_table_columns_of_numbers_get_their_widest_cell():
    """tabulary squeezes a column of numbers under a long header below its widest number (an
    Overfull hbox that runs into the next column); such columns get a fixed width instead."""
    latex = _extension("llmbook_latex")
    table = _table("""
.. list-table::
   :header-rows: 1

   * - Preset
     - Heads
     - Parameters
     - Weights
     - Note
   * - ``gpt2-medium``
     - 16
     - 354,823,168
     - 710 MB
     - a note long enough to wrap over several lines of its cell
   * - ``llama2-7b``
     - 32
     - 6,738,415,616
     - 13.5 GB
     - short
""")
    spec = latex.column_spec(table, 10.0)
    widths = [float(w) for w in re.findall(r"p\{([0-9.]+)pt\}", spec)]
    assert spec.endswith("L") and len(widths) == 4
    mono, serif, sans = (latex.text_width(text, font, 10.0) for text, font in
                         (("gpt2-medium", latex.MONO), ("6,738,415,616", latex.SERIF),
                          ("Heads", latex.SANS)))
    assert mono == pytest.approx(66.0)  # FreeMono: 0.6 em a character
    assert widths[0] == pytest.approx(mono + 0.5, abs=0.05)
    assert widths[1] == pytest.approx(sans + 0.5, abs=0.05)  # the header is wider than "32"
    assert widths[2] == pytest.approx(serif + 0.5, abs=0.05)
    # a number with its unit, or with its interval, does not wrap at its spaces either
    assert latex.NUMBER_CELL.fullmatch("0.61 [0.55, 0.67]") and latex.NUMBER_CELL.fullmatch("[42.0, 53.3]")
    assert not latex.NUMBER_CELL.fullmatch("2.1 bits per character")
    assert widths[3] == pytest.approx(
        max(latex.text_width("13.5 GB", latex.SERIF, 10.0),
            latex.text_width("Weights", latex.SANS, 10.0)) + 0.5, abs=0.05)
    assert latex.text_width("6,738,415,616", latex.SERIF, 10.0) > latex.text_width(
        "354,823,168", latex.SERIF, 10.0)


def test_pdf_tables_without_fixed_columns_or_with_merged_cells_keep_sphinx_spec():
    latex = _extension("llmbook_latex")
    prose = _table("""
.. list-table::
   :header-rows: 1

   * - Model
     - Verdict
   * - the book model
     - 2.1 bits
""")
    assert latex.column_spec(prose, 10.0) is None
    merged = _table("""
+-------+-------+
| a     | b     |
+=======+=======+
| 1     | 2     |
+-------+-------+
| 3 spans both  |
+---------------+
""")
    assert latex.column_spec(merged, 10.0) is None
    maths = _table("""
.. list-table::
   :header-rows: 1

   * - Scale
     - n
   * - :math:`\\sqrt{d}`
     - 12
""")
    assert latex.column_spec(maths, 10.0).startswith("L>")
