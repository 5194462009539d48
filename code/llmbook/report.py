"""Presentation helpers for the chapters: tables that render the same in the HTML and the
PDF editions.

Chapters emit Markdown (not HTML: an HTML object prints as
``<IPython.core.display.HTML object>`` in the PDF), and the build renders Markdown outputs
as MyST, so a table can carry a numbered caption and a label for ``{numref}``.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from IPython.display import Markdown


def _cell(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(header: Sequence[str], rows: Iterable[Sequence], *,
                   caption: str | None = None, name: str | None = None) -> Markdown:
    """A pipe table; with ``caption`` (and ``name`` for cross-references) a numbered MyST
    table."""
    rows = [list(row) for row in rows]
    if any(len(row) != len(header) for row in rows):
        raise ValueError(f"every row needs {len(header)} cells to match the header "
                         f"{list(header)}")
    lines = ["| " + " | ".join(map(_cell, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(_cell, row)) + " |" for row in rows]
    table = "\n".join(lines)
    if caption is None:
        if name is not None:
            raise ValueError("a table needs a caption to be numbered and referenced "
                             "by name")
        return Markdown(table)
    label = f":name: {name}\n" if name else ""
    return Markdown(f":::{{table}} {caption}\n{label}\n{table}\n:::")
