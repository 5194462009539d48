"""The build pipeline: profile validation, atomic chapter execution, up-to-date checks."""

from __future__ import annotations

import nbformat
import pytest

from llmbook import build, profiles


def _notebook(path, *cells):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("profile = 'cpu'", metadata={"tags": ["parameters"]})]
    nb.cells += [nbformat.v4.new_code_cell(source) for source in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


@pytest.fixture
def stage(tmp_path, monkeypatch):
    (tmp_path / "stage" / "chapters").mkdir(parents=True)
    monkeypatch.setattr(build, "stage_dir", lambda profile: tmp_path / "stage")
    return tmp_path


def test_unknown_profile_lists_the_valid_ones(capsys):
    assert build.main(["execute", "--profile", "tpu"]) == 1
    assert "unknown profile 'tpu'; valid profiles are 'cpu', 'gpu'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="valid profiles"):
        profiles.get_profile("CPU")


def test_gpu_profile_without_a_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(profiles.torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        profiles.get_profile("gpu")


def test_chapter_executes_once_and_is_then_up_to_date(stage):
    source = _notebook(stage / "01_ok.ipynb", "print(profile)")
    status, _ = build.execute_chapter(source, "cpu", "pkg")
    assert status == "executed"
    executed = nbformat.read(stage / "stage" / "chapters" / "01_ok.ipynb", as_version=4)
    assert executed.cells[-1].outputs[0]["text"].strip() == "cpu"
    assert "remove-cell" in executed.cells[0].metadata["tags"]
    assert build.execute_chapter(source, "cpu", "pkg")[0] == "up to date"
    assert build.execute_chapter(source, "cpu", "changed package")[0] == "executed"


def test_failing_chapter_names_the_cell_and_leaves_nothing(stage):
    source = _notebook(stage / "02_bad.ipynb", "x = 1", "raise ValueError('broken on purpose')")
    with pytest.raises(build.BuildError, match=r"02_bad.ipynb failed in cell 3 \(\"raise ValueError.*ValueError: broken on purpose"):
        build.execute_chapter(source, "cpu", "pkg")
    assert list((stage / "stage" / "chapters").iterdir()) == []


def test_interrupted_execution_leaves_no_partial_notebook(stage, monkeypatch):
    import papermill

    source = _notebook(stage / "03_slow.ipynb", "print(1)")

    def interrupted(input_path, output_path, **kwargs):
        with open(output_path, "w") as handle:
            handle.write('{"cells": [')  # what papermill has written when the kill arrives
        raise KeyboardInterrupt

    monkeypatch.setattr(papermill, "execute_notebook", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build.execute_chapter(source, "cpu", "pkg")
    assert list((stage / "stage" / "chapters").iterdir()) == []


def test_execution_key_depends_on_notebook_package_and_profile(tmp_path):
    source = _notebook(tmp_path / "x.ipynb", "1")
    key = build.execution_key(source, "cpu", "a")
    assert key != build.execution_key(source, "gpu", "a") != build.execution_key(source, "cpu", "b")
