"""Chapter 2: property tests (hypothesis) for the tokenizers: round trips and agreement with
tiktoken on arbitrary Unicode text, and streaming equal to one-shot encoding for arbitrary
chunkings."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmbook.tokenizers import (
    ENDOFTEXT, BPEConfig, cl100k_base, cl100k_encoding, to_tiktoken, train_bpe,
)

SAMPLE = """ROMEO:
But, soft! what light through yonder window breaks?
It is the east, and Juliet is the sun.
Arise, fair sun, and kill the envious moon, 1597 'tis o'er!
"""

# Text built to hit the pattern's edges: whitespace of every kind, digits, apostrophes, letters, marks.
edgy_text = st.lists(
    st.one_of(st.sampled_from(list(" \t\n\r\u00a0\u3000'sStT0123456789.,!?-") + ["<|", "|>", "'s", "\r\n"]),
              st.characters()),
    max_size=120,
).map("".join)
# Per-test settings (not a global profile, which would change other test files' hypothesis runs).
property_settings = settings(max_examples=150, deadline=None,
                             suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def ours():
    return train_bpe(SAMPLE * 20, BPEConfig(400))


@pytest.fixture(scope="module")
def engines(ours):
    return {"ours": (ours, to_tiktoken(ours)), "cl100k": (cl100k_base(), cl100k_encoding())}


@property_settings
@given(text=st.text())
def test_decode_encode_is_identity_on_arbitrary_unicode(ours, text):
    assert ours.decode(ours.encode(text, disallowed_special=())) == text


@property_settings
@given(text=st.one_of(st.text(), edgy_text))
@pytest.mark.parametrize("name", ["ours", "cl100k"])
def test_pure_python_encoder_equals_tiktoken(engines, name, text):
    mine, theirs = engines[name]
    assert mine.encode_ordinary(text) == theirs.encode_ordinary(text)


@property_settings
@given(text=edgy_text, cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=12))
def test_streaming_equals_one_shot(ours, text, cuts):
    text = text.replace("<||>", ENDOFTEXT)
    points = sorted({c for c in cuts if c < len(text)} | {0, len(text)})
    chunks = [text[i:j] for i, j in zip(points, points[1:])]
    expected = ours.encode(text, allowed_special="all")
    assert list(ours.encode_iterable(chunks, allowed_special="all")) == expected


@property_settings
@given(data=st.data())
def test_decode_never_raises_on_valid_ids(ours, data):
    ids = data.draw(st.lists(st.integers(min_value=0, max_value=ours.n_vocab - 1), max_size=50))
    assert isinstance(ours.decode(ids), str)
    assert ours.decode_bytes(ids) == b"".join(ours.token_bytes(i) for i in ids)
