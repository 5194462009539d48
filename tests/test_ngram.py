"""Tests for llmbook.ngram's Kneser-Ney model against a direct implementation of its
equations, character by character."""

from __future__ import annotations

import math
from collections import Counter, defaultdict

import pytest

from llmbook.ngram import KneserNey, char_ngram_bits_per_char

TEXT = ("ROMEO:\nBut soft, what light through yonder window breaks?\n\nJULIET:\nO Romeo, Romeo, "
        "wherefore art thou Romeo?\n\n")


def direct_kneser_ney(train: str, order: int, discount: float, alphabet: list[str]):
    """p(c | h) straight from the definition, with dictionaries."""
    plain = Counter(train[i : i + order] for i in range(len(train) - order + 1))
    cont = {}
    for k in range(1, order):
        before = defaultdict(set)
        for i in range(len(train) - k):
            before[train[i + 1 : i + 1 + k]].add(train[i])
        cont[k] = {g: len(s) for g, s in before.items()}

    def prob(c: str, h: str) -> float:
        p = 1.0 / len(alphabet)
        for k in range(1, len(h) + 2):
            table = plain if k == order else cont[k]
            context = h[len(h) - k + 1 :] if k > 1 else ""
            total = sum(v for g, v in table.items() if g[:-1] == context)
            if total == 0:
                continue
            kinds = sum(1 for g, v in table.items() if g[:-1] == context and v > 0)
            count = table.get(context + c, 0)
            p = (max(count - discount, 0) + discount * kinds * p) / total
        return p

    return prob


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_kneser_ney_equals_its_equations(order):
    train, held_out = TEXT * 2, "Romeo, what light? Zounds!\n"
    alphabet = sorted(set(train) | set(held_out))
    model = KneserNey(train, order, alphabet=held_out)
    prob = direct_kneser_ney(train, order, 0.7, alphabet)
    expected = -sum(math.log2(prob(c, held_out[max(0, i - order + 1) : i]))
                    for i, c in enumerate(held_out)) / len(held_out)
    assert model.bits_per_char(held_out, 0.7) == pytest.approx(expected, rel=1e-10)


def test_kneser_ney_distributions_sum_to_one():
    alphabet = sorted(set(TEXT))
    prob = direct_kneser_ney(TEXT, 3, 0.8, alphabet)
    for history in ("Ro", "ou", "zz", "\n\n"):
        assert sum(prob(c, history) for c in alphabet) == pytest.approx(1.0, abs=1e-12)


def test_kneser_ney_beats_add_alpha_on_held_out_text_and_rejects_bad_input():
    train = TEXT * 20
    held_out = "But soft, Juliet, what light breaks through yonder window, Romeo?\n"
    kn = KneserNey(train, 4, alphabet=held_out).bits_per_char(held_out, 0.75)
    additive = min(char_ngram_bits_per_char(train, held_out, 4, a) for a in (1.0, 0.1, 0.01))
    assert kn < additive  # redistributing by continuation counts beats a flat pseudo-count
    with pytest.raises(ValueError, match="alphabet"):
        KneserNey(train, 3).bits_per_char("xyz")
    with pytest.raises(ValueError, match="discount"):
        KneserNey(train, 3).bits_per_char(TEXT, 1.0)
    with pytest.raises(ValueError, match="order"):
        KneserNey(train, 0)
