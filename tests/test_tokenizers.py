"""Chapter 2: byte-level BPE (naive and fast trainers, encoder, special tokens, streaming,
save/load), checked against tiktoken, HF tokenizers and SentencePiece."""

from __future__ import annotations

import base64
import json
import random

import numpy as np
import pytest
import tiktoken
import tiktoken.load

from llmbook import data
from llmbook.tokenizers import (
    ENDOFTEXT, GPT2_SPLIT_PATTERN, GPT4_SPLIT_PATTERN, BPEConfig, DisallowedSpecialTokenError, Tokenizer,
    TokenizerFileError, book, bpe, cl100k_base, cl100k_encoding, count_words, fast, io, o200k_base,
    o200k_encoding, to_tiktoken, train_bpe,
)
from llmbook.tokenizers.baselines import (
    SentencePieceConfig, SentencePieceTokenizer, WordLevelTokenizer, hf_merges, train_hf_bpe,
)
from llmbook.tokenizers.display import BYTE_TO_UNICODE, gpt2_repr, visible
from llmbook.tokenizers.regex import pretokenize, resolve_pattern, split_on_special
from llmbook.tokenizers import tiktoken_export
from llmbook.tokenizers.tiktoken_export import ADVERSARIAL_TEXTS


@pytest.fixture(scope="module")
def train_text() -> str:
    return data.load_split("train")


@pytest.fixture(scope="module")
def held_out() -> str:
    """Both held-out splits: the validation and the test plays."""
    return data.load_split("val") + "\n" + data.load_split("test")


@pytest.fixture(scope="module")
def ours(train_text) -> Tokenizer:
    return train_bpe(train_text, BPEConfig(1024))


@pytest.fixture(scope="module")
def cl100k() -> Tokenizer:
    return cl100k_base()


# --- pre-tokenization
# --------------------------------------------------------------------------------------------


def test_patterns_are_tiktokens_character_for_character():
    import tiktoken_ext.openai_public as public

    assert GPT4_SPLIT_PATTERN == cl100k_encoding()._pat_str
    assert GPT2_SPLIT_PATTERN == public.r50k_pat_str


@pytest.mark.parametrize("pattern", ["gpt2", "gpt4"])
def test_pretokenize_partitions_the_text(pattern):
    for text in ADVERSARIAL_TEXTS.values():
        assert "".join(pretokenize(text, pattern)) == text


def test_the_two_patterns_differ_where_the_chapter_says():
    # GPT-4: contractions in any case, digits in groups of three, punctuation keeps its line
    # breaks.
    assert pretokenize("I'M 12345 (the)\n\n", "gpt2") == ["I", "'", "M", " 12345", " (", "the", ")", "\n\n"]
    assert pretokenize("I'M 12345 (the)\n\n", "gpt4") == ["I", "'M", " ", "123", "45", " (", "the", ")\n\n"]


def test_bad_pattern_names_and_regexes_are_clear_errors():
    with pytest.raises(ValueError, match="did you mean 'gpt4'"):
        resolve_pattern("GPT-4")
    with pytest.raises(ValueError, match="valid regular expression"):
        resolve_pattern("(unclosed")
    with pytest.raises(TypeError):
        resolve_pattern(None)


def test_split_on_special_keeps_order_and_text():
    parts = list(split_on_special("a<|endoftext|>b<|endoftext|>", [ENDOFTEXT]))
    assert parts == [("a", False), (ENDOFTEXT, True), ("b", False), (ENDOFTEXT, True)]


# --- training
# ----------------------------------------------------------------------------------------------------


def test_textbook_example_and_tie_breaking():
    # The example of the BPE article on Wikipedia: aaabdaaabac -> ZabdZabac -> ZYdZYac ->
    # XdXac. At the second step (Z, a) and (a, b) both occur twice: the smaller pair, (97, 98)
    # = "ab", wins.
    merges = bpe.train_naive({b"aaabdaaabac": 1}, 3)
    assert merges == [(97, 97), (97, 98), (256, 257)]
    assert fast.train_fast({b"aaabdaaabac": 1}, 3) == merges


def test_ties_go_to_the_smallest_pair():
    assert bpe.train_naive({b"cd": 1, b"ab": 1}, 1) == [(ord("a"), ord("b"))]
    assert bpe.train_naive({b"cd": 2, b"ab": 1}, 1) == [(ord("c"), ord("d"))]
    assert fast.train_fast({b"cd": 1, b"ab": 1}, 1) == [(ord("a"), ord("b"))]


def test_training_stops_when_no_pair_is_left():
    assert bpe.train_naive({b"ab": 3}, 10) == [(97, 98)]
    assert fast.train_fast({b"ab": 3}, 10) == [(97, 98)]


def test_naive_and_fast_trainers_learn_identical_merges_on_the_corpus(train_text):
    counts = count_words(train_text[:60_000])
    naive = bpe.train_naive(counts, 250)
    assert len(naive) == 250
    assert fast.train_fast(counts, 250) == naive


def test_naive_and_fast_agree_on_random_tie_heavy_words():
    rng = random.Random(0)
    for _ in range(20):
        counts = {bytes(rng.choices(b"abc", k=rng.randint(1, 12))): rng.randint(1, 3) for _ in range(30)}
        assert fast.train_fast(counts, 40) == bpe.train_naive(counts, 40)


def test_our_merges_match_hf_tokenizers(train_text):
    """The reference library: HF's byte-level BPE with our split pattern learns (almost) the
    same merges.

    The two differ only in how equal counts are ordered (HF numbers merged tokens differently),
    so the learned vocabularies, not the order, are compared.
    """
    sample = train_text[:300_000]
    vocab = bpe.vocab_from_merges(train_bpe(sample, BPEConfig(1024)).merges)
    ours = {(vocab[a], vocab[b]) for a, b in train_bpe(sample, BPEConfig(1024)).merges}
    theirs = set(hf_merges(train_hf_bpe(sample, 1024)))
    assert len(ours) == len(theirs) == 1024 - 257
    assert len(ours & theirs) / len(ours) > 0.97


def test_special_tokens_are_never_merged_across():
    text = ("ab" + ENDOFTEXT) * 50 + "x|>y<|" * 3
    tok = train_bpe(text, BPEConfig(300))
    assert tok.special_tokens == {ENDOFTEXT: tok.n_vocab - 1}
    assert not any(b"<|e" in t or b"t|>" in t or b"b<" in t for t in tok.ranks)  # nothing from the special
    assert tok.encode(text, allowed_special="all").count(tok.special_tokens[ENDOFTEXT]) == 50


def test_truncation_equals_training_a_smaller_vocabulary(train_text):
    sample = train_text[:200_000]
    big, small = train_bpe(sample, BPEConfig(700)), train_bpe(sample, BPEConfig(400))
    cut = big.truncated(400)
    assert cut.merges == small.merges and cut.special_tokens == small.special_tokens
    with pytest.raises(ValueError, match="vocab_size must be in"):
        big.truncated(5000)


def test_config_validation():
    with pytest.raises(ValueError, match="vocab_size must be an int >= 257"):
        BPEConfig(200)
    with pytest.raises(ValueError, match="trainer"):
        BPEConfig(300, trainer="slow")
    with pytest.raises(TypeError, match="tuple"):
        BPEConfig(300, special_tokens=[ENDOFTEXT])
    with pytest.raises(ValueError, match="duplicates"):
        BPEConfig(300, special_tokens=(ENDOFTEXT, ENDOFTEXT))
    with pytest.raises(ValueError, match="non-negative"):
        bpe.train_naive({}, -1)
    with pytest.raises(TypeError, match="must be str"):
        count_words([b"bytes"])


# --- encoding
# ----------------------------------------------------------------------------------------------------


def test_rank_encoder_replays_the_merges(ours, held_out):
    """The tiktoken-style encoder (ranks only) gives the same ids as replaying the merge list
    (bpe.py)."""
    words = sorted(set(pretokenize(held_out[:60_000])))
    for word in words:
        raw = word.encode("utf-8")
        assert ours._bpe(raw) == bpe.encode_with_merges(raw, ours.merges), word


def test_round_trip_and_compression_on_held_out(ours, held_out):
    ids = ours.encode(held_out)
    assert ours.decode(ids) == held_out
    assert len(held_out.encode()) / len(ids) > 2.4  # bytes per token at vocabulary 1024 (bytes alone: 1)


def test_tiktoken_export_gives_identical_ids(ours, held_out):
    exported = to_tiktoken(ours)
    assert exported.encode(held_out) == ours.encode(held_out)
    for name, text in ADVERSARIAL_TEXTS.items():
        ids = ours.encode(text)
        assert exported.encode(text) == ids, name
        assert ours.decode(ids) == text, name


def test_our_encoder_reproduces_cl100k(cl100k, held_out):
    reference = cl100k_encoding()
    assert cl100k.ranks[b"!"] == 0 and cl100k.ranks[b"\x00"] != 0  # single bytes are not in byte order
    assert cl100k.encode(held_out) == reference.encode(held_out)
    for name, text in ADVERSARIAL_TEXTS.items():
        assert cl100k.encode(text) == reference.encode(text), name
        assert cl100k.decode(cl100k.encode(text)) == text


def test_o200k_is_tiktokens_own_definition_with_verified_ranks(monkeypatch):
    # tiktoken's own o200k_base constructor, its download replaced by our verified ranks:
    # the pattern and special tokens it builds must be ours, character for character
    import tiktoken_ext.openai_public as public

    ours = o200k_encoding()
    asked = []

    def offline(url, expected_hash=None):
        asked.append(expected_hash)
        return dict(ours._mergeable_ranks)

    monkeypatch.setattr(public, "load_tiktoken_bpe", offline)
    definition = public.o200k_base()
    assert asked == [tiktoken_export.O200K_SHA256]  # the hash tiktoken checks is ours
    assert definition["pat_str"] == ours._pat_str
    assert definition["special_tokens"] == ours._special_tokens
    assert ours.n_vocab == 200_019 and len(ours._mergeable_ranks) == 199_998


def test_our_encoder_reproduces_o200k(held_out):
    reference, mine = o200k_encoding(), o200k_base()
    assert mine.encode(held_out[:200_000]) == reference.encode(held_out[:200_000])
    for name, text in ADVERSARIAL_TEXTS.items():
        ids = mine.encode(text, disallowed_special=())
        assert ids == reference.encode(text, disallowed_special=()), name
        assert mine.decode(ids) == text
    # the pattern's new rules: a case change splits a word, a contraction stays attached
    assert [reference.decode([i]) for i in reference.encode("CamelCase they'll")] == [
        "Camel", "Case", " they'll"]


def test_a_damaged_quicktok_vocabulary_is_refused(tmp_path):
    path = tmp_path / "o200k.vocab"
    path.write_bytes(b"\x02\x00\x00\x00\x01\x00!\x00\x00\x00\x00\x01\x00")
    with pytest.raises(ValueError, match="truncated"):
        tiktoken_export.read_quicktok_vocab(path)
    path.write_bytes(b"\x02\x00\x00\x00\x01\x00!\x00\x00\x00\x00")
    with pytest.raises(ValueError, match="announces 2"):
        tiktoken_export.read_quicktok_vocab(path)


def test_long_words_take_the_heap_path_with_the_same_result(ours, cl100k):
    rng = random.Random(1)
    for tok in (ours, cl100k):
        for _ in range(20):
            word = "".join(rng.choices(["a", "b", " ", "ab", "the", "é", "9"], k=rng.randint(50, 300)))
            raw = word.encode()
            heap = tok._bpe_heap(raw)
            parts = [raw[i : i + 1] for i in range(len(raw))]  # the quadratic loop, forced
            while True:
                ranks = [tok.ranks.get(parts[i] + parts[i + 1]) for i in range(len(parts) - 1)]
                candidates = [(r, i) for i, r in enumerate(ranks) if r is not None]
                if not candidates:
                    break
                _, i = min(candidates)
                parts[i : i + 2] = [parts[i] + parts[i + 1]]
            assert heap == [tok.ranks[p] for p in parts]
    assert ours.encode(" " * 20_000) == to_tiktoken(ours).encode(" " * 20_000)


def test_special_token_semantics_match_tiktoken(ours):
    reference = to_tiktoken(ours)
    text = f"a{ENDOFTEXT}b"
    with pytest.raises(DisallowedSpecialTokenError, match="allowed_special=") as info:
        ours.encode(text)
    assert ENDOFTEXT in str(info.value)
    with pytest.raises(ValueError):
        reference.encode(text)
    for kwargs in ({"allowed_special": "all"}, {"allowed_special": {ENDOFTEXT}}, {"disallowed_special": ()}):
        assert ours.encode(text, **kwargs) == reference.encode(text, **kwargs), kwargs
    assert ours.encode(text, allowed_special="all").count(ours.special_tokens[ENDOFTEXT]) == 1
    assert ours.encode_ordinary(text) == reference.encode_ordinary(text)
    assert ours.decode(ours.encode(text, allowed_special="all")) == text
    with pytest.raises(ValueError, match="does not have"):
        ours.encode(text, allowed_special={"<|im_start|>"})


def test_surrogates_are_replaced_as_tiktoken_does(ours):
    text = "bad \ud800 surrogate"
    assert ours.encode(text) == to_tiktoken(ours).encode(text)
    assert ours.decode(ours.encode(text)) == "bad \ufffd surrogate"


def test_encode_iterable_equals_encode_for_any_chunking(ours, held_out):
    rng = random.Random(2)
    text = held_out[:20_000] + "".join(ADVERSARIAL_TEXTS.values()) + f"x{ENDOFTEXT}{ENDOFTEXT}y {ENDOFTEXT}"
    expected = ours.encode(text, allowed_special="all")
    for _ in range(5):
        cuts = sorted(rng.sample(range(1, len(text)), 800))
        chunks = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)])]
        assert list(ours.encode_iterable(chunks, allowed_special="all")) == expected
    chars = list(text)  # one character at a time: every special token and word straddles chunks
    assert list(ours.encode_iterable(chars, allowed_special="all")) == expected
    with pytest.raises(DisallowedSpecialTokenError):
        list(ours.encode_iterable(chars))


def test_encode_iterable_streams_lazily(ours):
    def lines():
        for _ in range(1000):
            yield "To be, or not to be, that is the question.\n"
        raise RuntimeError("the encoder read past what it needed")

    stream = ours.encode_iterable(lines())
    head = [next(stream) for _ in range(100)]  # ids arrive before the input is exhausted
    assert ours.decode(head).startswith("To be, or not")


def test_bad_input_is_a_clear_error(ours):
    with pytest.raises(TypeError, match="must be str"):
        ours.encode(b"bytes")
    with pytest.raises(ValueError, match="not in the vocabulary"):
        ours.decode([0, 10**6])
    with pytest.raises(ValueError, match="lack 1 single bytes"):
        Tokenizer({bytes([b]): b for b in range(255)}, "gpt4")
    with pytest.raises(ValueError, match="not unique"):
        Tokenizer({**{bytes([b]): b for b in range(256)}, b"ab": 3}, "gpt4")
    with pytest.raises(ValueError, match="outside the ranks"):
        Tokenizer({bytes([b]): b for b in range(256)}, "gpt4", {ENDOFTEXT: 5})


# --- save and load
# -----------------------------------------------------------------------------------------------


def test_save_load_round_trip(ours, cl100k, tmp_path, held_out):
    for tok in (ours, cl100k):
        path = io.save(tok, tmp_path / f"{tok.name}.json")
        loaded = io.load(path)
        assert loaded.ranks == tok.ranks and loaded.special_tokens == tok.special_tokens
        assert loaded.pattern == tok.pattern and loaded.merges == tok.merges
        assert loaded.encode(held_out[:5000]) == tok.encode(held_out[:5000])
    document = json.loads((tmp_path / f"{ours.name}.json").read_text())
    assert document["format"] == "llmbook-bpe" and document["version"] == 1 and document["ranks"] is None


def test_corrupt_and_foreign_files_fail_clearly(ours, tmp_path):
    path = io.save(ours, tmp_path / "tok.json")
    good = path.read_text()
    path.write_text(good[: len(good) // 2])
    with pytest.raises(TokenizerFileError, match="not valid JSON"):
        io.load(path)
    document = json.loads(good)
    document["merges"][10] = [1, 2]
    path.write_text(json.dumps(document))
    with pytest.raises(TokenizerFileError, match="SHA-256"):
        io.load(path)
    path.write_text(json.dumps({"model": {"type": "BPE"}}))
    with pytest.raises(TokenizerFileError, match="not an llmbook tokenizer file"):
        io.load(path)
    path.write_text(json.dumps({**json.loads(good), "version": 2}))
    with pytest.raises(TokenizerFileError, match="version 2"):
        io.load(path)
    io.save_tiktoken(ours, path)
    with pytest.raises(TokenizerFileError, match="load_tiktoken"):
        io.load(path)
    with pytest.raises(FileNotFoundError):
        io.load(tmp_path / "missing.json")


def test_tiktoken_format_interoperates(ours, tmp_path):
    path = io.save_tiktoken(ours, tmp_path / "ours.tiktoken")
    assert tiktoken.load.load_tiktoken_bpe(str(path)) == ours.ranks
    loaded = io.load_tiktoken(path, ours.pattern, ours.special_tokens)
    assert loaded.ranks == ours.ranks
    import tiktoken_ext

    bundled = next(p for p in tiktoken_ext.__path__) + "/data/cl100k_base.tiktoken"
    assert io.load_tiktoken(bundled, "gpt4").ranks == cl100k_encoding()._mergeable_ranks
    lines = path.read_text().splitlines()
    lines[300] = "not-base64!! 300"
    path.write_text("\n".join(lines))
    with pytest.raises(TokenizerFileError, match="line 301"):
        io.load_tiktoken(path, "gpt4")
    path.write_text(base64.b64encode(b"a").decode() + " 0\n")
    with pytest.raises(TokenizerFileError, match="single bytes"):
        io.load_tiktoken(path, "gpt4")


# --- baselines and display
# ---------------------------------------------------------------------------------------


def test_word_level_baseline_has_unknown_words(train_text, held_out):
    words = WordLevelTokenizer.train(train_text)
    ids = words.encode(held_out)
    unknown = ids.count(0) / len(ids)
    assert 0.001 < unknown < 0.1
    assert words.decode(words.encode("To be, or not")) == "To be , or not"  # spacing is lost
    with pytest.raises(ValueError):
        WordLevelTokenizer.train(train_text, min_count=0)


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_sentencepiece_round_trips_without_unknowns(train_text, held_out, model_type):
    speeches = train_text[:300_000].split("\n\n")
    sp = SentencePieceTokenizer.train(speeches, SentencePieceConfig(600, model_type=model_type))
    sample = held_out[:20_000] + ADVERSARIAL_TEXTS["cjk"] + ADVERSARIAL_TEXTS["emoji"]
    ids = sp.encode(sample)
    assert sp.decode(ids) == sample and sp.count_unknown(ids) == 0 and sp.count_byte_fallback(ids) > 0
    with pytest.raises(ValueError, match="model_type"):
        SentencePieceConfig(600, model_type="wordpiece")


def test_display_helpers():
    assert gpt2_repr(b" the\n") == "\u0120the\u010a" and len(set(BYTE_TO_UNICODE.values())) == 256
    assert visible("a b\n") == "a\u2423b\u21b5"


# --- the book's cached tokenizer and token files
# -----------------------------------------------------------------


def test_book_tokenizer_and_token_files():
    tok = book.book_tokenizer("cpu")
    config = book.book_tokenizer_config("cpu")
    plays = data.split_plays("train").values()
    assert tok.n_vocab == config.bpe.vocab_size
    assert tok.merges == fast.train_fast(count_words(plays), config.bpe.num_merges)
    assert book.book_tokenizer("cpu").ranks == tok.ranks  # from the cache

    tokens = data.TokenFile(book.book_token_file("cpu", "val"))
    assert tokens.ids.dtype == np.uint16 and tokens.vocab_size == tok.n_vocab
    expected = "".join(text + ENDOFTEXT for text in data.split_plays("val").values())
    assert tok.decode(tokens.ids.tolist()) == expected

    big = data.TokenFile(book.cl100k_token_file("val"))
    assert big.ids.dtype == np.uint32 and int(big.ids.max()) >= 1 << 16
    assert cl100k_encoding().decode(big.ids.tolist()) == expected
    with pytest.raises(ValueError, match="valid splits"):
        book.book_token_file("cpu", "dev")


def test_on_merge_reports_each_merge_with_its_count():
    seen_naive, seen_fast = [], []
    counts = {b"aaabdaaabac": 1}
    bpe.train_naive(counts, 3, lambda *args: seen_naive.append(args))
    fast.train_fast(counts, 3, lambda *args: seen_fast.append(args))
    assert seen_naive == seen_fast == [((97, 97), 256, 4), ((97, 98), 257, 2), ((256, 257), 258, 2)]
