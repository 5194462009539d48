"""Showing tokens to people: GPT-2's printable byte alphabet, visible whitespace, and text
coloured by token.

A token is a byte string, and many are not printable on their own: a space, a line break,
half of a UTF-8 character. Chapter 2 shows tokens in two ways. In printed output, as Python
string literals (``' the'``, ``'\\n'``), which survive any font. In figures, with a visible
space ``␣`` and line break ``↵``, each token in a coloured box. HF ``tokenizers`` and
GPT-2's files use a third way, :data:`BYTE_TO_UNICODE`: every byte is mapped to a printable
character (a space becomes ``Ġ``, a line break ``Ċ``), which is why those letters fill
GPT-2's vocabulary file.
"""

from __future__ import annotations

from typing import Sequence


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from the 256 bytes to printable characters: printable Latin-1 bytes map
    to themselves, the other 68 (controls, space, soft hyphen...) to the characters from
    U+0100 up, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    shifted = (b for b in range(256) if b not in mapping)
    mapping.update({b: chr(256 + n) for n, b in enumerate(shifted)})
    return dict(sorted(mapping.items()))


BYTE_TO_UNICODE: dict[int, str] = _bytes_to_unicode()
UNICODE_TO_BYTE: dict[str, int] = {c: b for b, c in BYTE_TO_UNICODE.items()}


def gpt2_repr(token: bytes) -> str:
    """A token in GPT-2's printable alphabet: ``b' the'`` -> ``'Ġthe'``."""
    return "".join(BYTE_TO_UNICODE[b] for b in token)


def visible(text: str) -> str:
    """Whitespace made visible for figures: space ``␣``, line break ``↵``, tab ``⇥``."""
    return text.replace(" ", "\u2423").replace("\n", "\u21b5").replace("\t", "\u21e5")


def token_texts(token_bytes: Sequence[bytes]) -> list[str]:
    """Each token's text; a token that is part of a UTF-8 character shows as U+FFFD."""
    return [token.decode("utf-8", errors="replace") for token in token_bytes]


PALETTE = ("#cfe2f3", "#fce5cd", "#d9ead3", "#ead1dc", "#fff2cc", "#d0e0e3")
MONO_ADVANCE = 0.602  # DejaVu Sans Mono: every glyph is 0.602 em wide


Box = tuple[int, int, str, int]  # (column, line, shown text, piece index)


def layout_tokens(pieces: Sequence[str], width: int = 72) -> tuple[list[Box], int]:
    """Place ``pieces`` (token texts, in order) on a monospace grid of ``width`` columns.

    Returns boxes ``(column, line, shown text, piece index)`` and the number of lines. A
    piece that does not fit moves to the next line; a line break inside a piece ends the
    line after its ``↵``.
    """
    boxes: list[Box] = []
    column, line = 0, 0
    for index, piece in enumerate(pieces):
        parts = piece.split("\n")
        for k, part in enumerate(parts):
            shown = visible(part) + ("\u21b5" if k < len(parts) - 1 else "")
            if shown:
                if column and column + len(shown) > width:
                    column, line = 0, line + 1
                boxes.append((column, line, shown, index))
                column += len(shown)
            if k < len(parts) - 1:
                column, line = 0, line + 1
    n_lines = 1 + max((box[1] for box in boxes), default=0)
    return boxes, n_lines


def draw_tokens(
    ax, pieces: Sequence[str], *, width: int = 72, title: str | None = None
) -> None:
    """Draw ``pieces`` as text in boxes of alternating colours, laid out by
    :func:`layout_tokens`."""
    from matplotlib.patches import Rectangle

    boxes, n_lines = layout_tokens(pieces, width)
    ax.set_xlim(0, width)
    ax.set_ylim(n_lines, 0)
    ax.axis("off")
    fig = ax.figure
    axes_width_in = ax.get_position().width * fig.get_figwidth()
    fontsize = 72 * axes_width_in / width / MONO_ADVANCE  # one character per grid column
    for column, line, shown, index in boxes:
        ax.add_patch(Rectangle((column, line + 0.08), len(shown), 0.84, linewidth=0.3,
                               edgecolor="#888888",
                               facecolor=PALETTE[index % len(PALETTE)]))
        ax.text(column, line + 0.52, shown, family="DejaVu Sans Mono", fontsize=fontsize,
                va="center", ha="left")
    if title:
        ax.set_title(title, fontsize=9, loc="left")
