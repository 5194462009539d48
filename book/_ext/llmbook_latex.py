"""Sphinx extension: give the PDF a book's front and back matter.

Jupyter Book's LaTeX writer turns every part of the table of contents into a ``\\part`` and every page into a
numbered ``\\chapter``, so "How to run" and "Notation" would become Chapters 1 and 2 and push the real chapters
down. After Sphinx writes the ``.tex`` file (and before latexmk runs), this rewrites it: the root page becomes an
unnumbered Preface, the front and back parts lose their part pages and their chapters their numbers (LaTeX's
``secnumdepth`` set to -1 also keeps the chapter counter still), numbering resumes for the book's chapters, and
the bibliography page keeps only the heading that the bibliography environment makes itself, and the index
page (a link to the index, for the HTML edition) gives way to the index LaTeX prints.
"""

from __future__ import annotations

import re
from pathlib import Path


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
    app.connect("build-finished", _on_build_finished)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
