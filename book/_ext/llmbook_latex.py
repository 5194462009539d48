"""Sphinx extension: give the PDF a book's front and back matter, and tables whose columns fit.

Jupyter Book's LaTeX writer turns every part of the table of contents into a ``\\part`` and every page into a
numbered ``\\chapter``, so "How to run" and "Notation" would become Chapters 1 and 2 and push the real chapters
down. After Sphinx writes the ``.tex`` file (and before latexmk runs), this rewrites it: the root page becomes an
unnumbered Preface, the front and back parts lose their part pages and their chapters their numbers (LaTeX's
``secnumdepth`` set to -1 also keeps the chapter counter still), numbering resumes for the book's chapters, and
the bibliography page keeps only the heading that the bibliography environment makes itself, and the index
page (a link to the index, for the HTML edition) gives way to the index LaTeX prints.

It also gives the PDF's tables columns their numbers fit in. Sphinx sets a table with ``tabulary``, which shares
the line between columns in proportion to their widest cells, headers included, so a column of numbers under a
longer header is squeezed below its widest number and the number runs into the next column (an ``Overfull
\\hbox``). A column whose every body cell is one unbreakable word (a number, a name in code) or a number with its
unit or interval gets a fixed width: its widest cell, or its header's longest word, measured in the fonts the PDF uses; the
other columns share the rest as before, set ragged right. Tables are set in \\small, as books set them.
"""

from __future__ import annotations

import functools
import re
import subprocess
from pathlib import Path

from docutils import nodes
from sphinx import addnodes
from sphinx.transforms.post_transforms import SphinxPostTransform

# Sphinx's xelatex fonts (XELATEX_DEFAULT_FONTPKG): body text, table headers (sans) and code.
SERIF, SERIF_BOLD, SANS, MONO = "FreeSerif", "FreeSerif:style=Bold", "FreeSans", "FreeMono"
# Tables are set a size smaller than the text, as books set them (\small: its size in LaTeX's standard classes
# for the book's point size), with 4pt instead of 6pt on each side of a column: a table of ten columns gains
# 40pt. The column widths below are measured at that size.
TABLE_FONT = {10: 9.0, 11: 10.0, 12: 10.95}
TABLE_STYLE = "\\small\\setlength{\\tabcolsep}{4pt}"
# Cells that must not wrap although they have spaces: a number with its unit ("2.13 MB", "804 k"), an interval
# ("[42.0, 53.3]") and an estimate with its interval ("0.61 [0.55, 0.67]").
_NUMBER = r"[-+]?[0-9][0-9.,]*(?:e[-+]?[0-9]+)?%?"
NUMBER_CELL = re.compile(rf"{_NUMBER} [A-Za-z%]{{1,3}}|(?:{_NUMBER} )?\[{_NUMBER}, {_NUMBER}\]")
# Inline nodes whose text is set as it reads; a cell with anything else (maths, images) is not measured.
_MEASURABLE = (nodes.Text, nodes.paragraph, nodes.literal, nodes.strong, nodes.emphasis, nodes.inline,
               nodes.reference, nodes.target)


def _rewrite(tex: str, front: list[str], back: list[str]) -> str:
    marker = "\\sphinxtableofcontents\n\\pagestyle{normal}\n"
    if marker not in tex:
        raise RuntimeError("llmbook_latex: the table of contents marker was not found in the LaTeX output")
    tex = tex.replace(
        marker,
        marker + "\\edef\\llmbookSecnumdepth{\\arabic{secnumdepth}}\n\\setcounter{secnumdepth}{-1}\n"
        "\\chapter{Preface}\n",
        1,
    )
    for caption in front:
        tex = tex.replace(f"\\part{{{caption}}}\n", "", 1)
    first_numbered = tex.find("\\part{", tex.index("\\chapter{Preface}"))
    if first_numbered >= 0:
        tex = tex[:first_numbered] + "\\setcounter{secnumdepth}{\\llmbookSecnumdepth}\n" + tex[first_numbered:]
    for caption in back:
        tex = tex.replace(f"\\part{{{caption}}}\n", "\\setcounter{secnumdepth}{-1}\n", 1)
    # The bibliography environment starts its own chapter; the page's heading would add an empty one before it.
    tex = re.sub(r"\\chapter\{[^\n]*\}\n(\\label[^\n]*\n)?(\\begin\{sphinxthebibliography\})", r"\1\2", tex)
    # The index page holds only a link for the HTML edition; the PDF prints the index itself.
    tex = re.sub(r"\\chapter\{Index\}\n(\\label[^\n]*\n)?\s*(?=\\renewcommand\{\\indexname\}|\\printindex|"
                 r"\\end\{document\})", "", tex)
    return tex


@functools.lru_cache(maxsize=None)
def _font_metrics(font: str) -> tuple[dict[int, int], float]:
    """Advance width of each character of `font` (a fontconfig pattern), in units of the em."""
    from fontTools.ttLib import TTFont

    try:
        path = subprocess.run(["fc-match", "--format=%{file}", font], capture_output=True, text=True,
                              check=True).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        raise RuntimeError(f"llmbook_latex: cannot locate the font {font!r} ({error}); the PDF needs "
                           "fontconfig and Debian's fonts-freefont-otf (see `make tex`)") from error
    if Path(path).stem.replace("Bold", "") != font.split(":")[0]:
        raise RuntimeError(f"llmbook_latex: fontconfig gives {path} for {font!r}: install Debian's "
                           "fonts-freefont-otf (see `make tex`)")
    ttf = TTFont(path)
    metrics, cmap = ttf["hmtx"].metrics, ttf.getBestCmap()
    return {code: metrics[glyph][0] for code, glyph in cmap.items()}, float(ttf["head"].unitsPerEm)


def text_width(text: str, font: str, size_pt: float) -> float:
    """Width of `text` set on one line in `font` at `size_pt`, in points (kerning ignored)."""
    advances, units = _font_metrics(font)
    missing = advances.get(ord("0"), units / 2)
    return sum(advances.get(ord(char), missing) for char in text) * size_pt / units


def _cell_width(entry: nodes.Element, size_pt: float) -> float | None:
    """The width of a body cell that cannot break (no space in it), else None."""
    if any(not isinstance(node, _MEASURABLE) for node in entry.findall(nodes.Element)
           if node is not entry):
        return None
    text = entry.astext().strip()
    if re.search(r"\s", text) and not NUMBER_CELL.fullmatch(text):
        return None
    if entry.next_node(nodes.literal):
        font = MONO
    elif entry.next_node(nodes.strong):
        font = SERIF_BOLD
    else:
        font = SERIF
    return text_width(text, font, size_pt)


def column_spec(table: nodes.table, size_pt: float) -> str | None:
    """A tabulary column spec that fixes the width of each column of unbreakable body cells, or None
    where Sphinx's own spec is as good (no such column) or cannot be replaced (merged cells, a longtable)."""
    tgroup = table.next_node(nodes.tgroup)
    if tgroup is None or "longtable" in table.get("classes", []):
        return None
    head = [row for thead in tgroup.findall(nodes.thead) for row in thead.findall(nodes.row)]
    body = [row for tbody in tgroup.findall(nodes.tbody) for row in tbody.findall(nodes.row)]
    rows = head + body
    # Sphinx sets a table of more than 30 rows as a longtable, where tabulary's columns do not exist.
    if not body or len(rows) > 30 or any(len(row) != tgroup["cols"] for row in rows):
        return None
    if any(entry.get("morecols") or entry.get("morerows") for row in rows for entry in row):
        return None
    specs = []
    for column in range(tgroup["cols"]):
        widths = [_cell_width(row[column], size_pt) for row in body]
        if None in widths:
            specs.append("L")  # text, ragged right: justified lines in a narrow column gape
            continue
        words = [word for row in head for word in row[column].astext().split()]
        header = max((text_width(word, SANS, size_pt) for word in words), default=0.0)
        width = max(*widths, header) + 0.5  # half a point for the kerning we ignore
        specs.append(f">{{\\raggedright\\arraybackslash}}p{{{width:.1f}pt}}")
    return None if all(spec == "L" for spec in specs) else "".join(specs)


class FitTableColumns(SphinxPostTransform):
    """Put a column spec before every table of the LaTeX build that needs one (see the module's text)."""

    default_priority = 900
    builders = ("latex",)

    def run(self, **kwargs) -> None:
        size = _table_font(self.config)
        for table in list(self.document.findall(nodes.table)):
            parent = table.parent
            index = parent.index(table)
            if index > 0 and isinstance(parent[index - 1], addnodes.tabular_col_spec):
                continue  # the author's own {tabularcolumns}
            spec = column_spec(table, size)
            if spec is not None:
                parent.insert(index, addnodes.tabular_col_spec(spec=spec))


def _table_font(config) -> float:
    pointsize = config.latex_elements.get("pointsize", "10pt")
    try:
        return TABLE_FONT[int(pointsize.removesuffix("pt"))]
    except (KeyError, ValueError):
        raise RuntimeError(f"llmbook_latex: latex_elements pointsize {pointsize!r} is not one of LaTeX's "
                           f"standard sizes ({', '.join(f'{size}pt' for size in TABLE_FONT)})") from None


def _on_config_inited(app, config) -> None:
    _table_font(config)  # a size we can measure at
    hooks = "".join(f"\\AddToHook{{env/{env}/begin}}{{{TABLE_STYLE}}}\n" for env in ("tabulary", "longtable"))
    config.latex_elements = {**config.latex_elements,
                             "preamble": config.latex_elements.get("preamble", "") + "\n" + hooks}


def _on_build_finished(app, exception) -> None:
    if exception is not None or app.builder.name != "latex":
        return
    for path in Path(app.outdir).glob("*.tex"):
        text = path.read_text(encoding="utf-8")
        if "\\begin{document}" in text:
            path.write_text(_rewrite(text, app.config.llmbook_front_parts, app.config.llmbook_back_parts),
                            encoding="utf-8")


def setup(app):
    app.add_config_value("llmbook_front_parts", [], "env")
    app.add_config_value("llmbook_back_parts", [], "env")
    app.connect("config-inited", _on_config_inited)
    app.connect("build-finished", _on_build_finished)
    app.add_post_transform(FitTableColumns)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
