"""Artifacts cache, profiles and report helpers."""

from __future__ import annotations

import re

from dataclasses import dataclass

import pytest

from llmbook import artifacts, profiles, report


@dataclass(frozen=True)
class Config:
    size: int = 3


def test_artifact_is_built_once_and_keyed_by_config(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMBOOK_CACHE", str(tmp_path))
    calls = []

    def build(out):
        calls.append(out)
        (out / "data.txt").write_text("x")

    first = artifacts.cached_artifact("demo", Config(), build)
    again = artifacts.cached_artifact("demo", Config(), build)
    other = artifacts.cached_artifact("demo", Config(size=4), build)
    assert first == again != other and len(calls) == 2
    assert (first / "data.txt").read_text() == "x" and (first / "config.json").is_file()


def test_failed_build_leaves_no_artifact(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMBOOK_CACHE", str(tmp_path))

    def build(out):
        (out / "half.txt").write_text("partial")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        artifacts.cached_artifact("demo", Config(), build)
    assert list((tmp_path / "demo").iterdir()) == []


def test_artifact_key_depends_on_module_source():
    import llmbook.dedup as dedup
    import llmbook.report as rep

    assert artifacts.artifact_key("k", Config(), [dedup]) != artifacts.artifact_key("k", Config(), [rep])
    with pytest.raises(TypeError, match="dataclass"):
        artifacts.artifact_key("k", {"size": 3})


def test_atomic_write(tmp_path):
    target = tmp_path / "sub" / "f.txt"
    artifacts.atomic_write_text(target, "hello")
    assert target.read_text() == "hello" and [p.name for p in target.parent.iterdir()] == ["f.txt"]


def test_profiles_are_validated_and_seed_everything():
    import torch

    cpu = profiles.start("cpu")
    a = torch.rand(3)
    profiles.start("cpu")
    assert torch.equal(a, torch.rand(3)) and cpu.device == "cpu"
    with pytest.raises(ValueError, match="positive"):
        profiles.DataSettings(block_size=0, batch_size=1)


def test_markdown_table():
    table = report.markdown_table(["a", "b"], [(1, "x|y")], caption="Cap.", name="tab-x").data
    assert table.startswith(":::{table} Cap.\n:name: tab-x") and "x\\|y" in table
    with pytest.raises(ValueError, match="2 cells"):
        report.markdown_table(["a", "b"], [(1,)])


def test_the_bibliography_parses():
    """A merge that drops one closing brace breaks every page's citations; catch it here, not
    in the book build."""
    from pathlib import Path

    import pybtex.database

    path = Path(__file__).resolve().parents[1] / "book" / "references.bib"
    entries = pybtex.database.parse_file(path).entries
    text = path.read_text(encoding="utf-8")
    assert len(entries) == len(re.findall(r"^@\w+\{", text, flags=re.M))
