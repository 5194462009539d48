"""Build the book: stage the sources, execute the chapters with papermill, render HTML and
PDF, check the PDF.

Usage (the Makefile calls these; run ``python -m llmbook.build --help``)::

    python -m llmbook.build --profile cpu execute
        # run every chapter into the stage (only those that changed)
    python -m llmbook.build --profile cpu html pdf
        # render the staged, executed book
    python -m llmbook.build --profile cpu check
        # the PDF exists, has every chapter title, no missing glyph

The stage is ``_build/<profile>/stage``: a copy of ``_config.yml``, ``_toc.yml`` and
``book/``, a link to ``code/`` (so that ``literalinclude`` reaches the package source) and
the executed chapters. A chapter is re-executed only when its notebook, the package source
or the profile changed: the executed copy records a key that hashes all three. Papermill
writes its output as it goes, so execution goes to a temporary file that is renamed into
place only on success; an interrupted or failing run never leaves a copy that looks
finished.
"""

from __future__ import annotations

import argparse
import hashlib
import html as html_lib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from llmbook.artifacts import atomic_write_text
from llmbook.paths import PACKAGE_DIR, REPO_ROOT
from llmbook.profiles import PROFILES, get_profile

MATHJAX_FILE = "tex-svg-full.js"


class BuildError(RuntimeError):
    pass


def _root() -> Path:
    if REPO_ROOT is None:
        raise BuildError("the book builds from a checkout of the repository "
                         "(pip install -e .), not an installed copy")
    return REPO_ROOT


def stage_dir(profile: str) -> Path:
    return _root() / "_build" / profile / "stage"


def chapter_sources() -> list[Path]:
    """The chapter notebooks that ``_toc.yml`` lists, in its order."""
    toc = (_root() / "_toc.yml").read_text(encoding="utf-8")
    names = re.findall(r"^\s*-\s*file:\s*chapters/(\S+?)(?:\.ipynb)?\s*$", toc, flags=re.M)
    paths = [_root() / "chapters" / f"{name}.ipynb" for name in names]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise BuildError(f"_toc.yml lists chapters that do not exist: {missing}")
    return paths


def package_digest() -> str:
    """Hash of every source file of the package: a change anywhere re-executes the
    chapters."""
    digest = hashlib.sha256()
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        # the build itself does not change what a chapter computes
        if path.name == "build.py":
            continue
        digest.update(path.relative_to(PACKAGE_DIR).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def execution_key(notebook: Path, profile: str, package: str) -> str:
    digest = hashlib.sha256(notebook.read_bytes())
    digest.update(package.encode())
    digest.update(profile.encode())
    return digest.hexdigest()


def _notebook_digest(notebook: Path) -> str:
    return hashlib.sha256(notebook.read_bytes()).hexdigest()


def stale_reason(source: Path, profile: str, package: str) -> str | None:
    """Why the chapter must run (None when its executed copy is up to date).

    The executed copy records the digests of what it was computed from, so the build can say
    which of the three changed: the notebook, the package, or the profile.
    """
    import nbformat

    target = stage_dir(profile) / "chapters" / source.name
    if not target.is_file():
        return "not executed yet"
    recorded = nbformat.read(target, as_version=4).metadata.get("llmbook", {})
    if recorded.get("key") == execution_key(source, profile, package):
        return None
    changed = [name for name, now in (("notebook", _notebook_digest(source)),
                                      ("package", package), ("profile", profile))
               if name in recorded and recorded[name] != now]
    if changed:
        return " and ".join(changed) + " changed"
    # a copy from a build that did not record which
    return "notebook, package or profile changed"


def _copy_tree(src: Path, dst: Path) -> None:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)


def mathjax_source() -> Path:
    """MathJax 3, served with the HTML so that maths renders offline (fetched by
    ``make setup`` from npm)."""
    path = _root() / ".venv" / "share" / "mathjax" / MATHJAX_FILE
    env = os.environ.get("LLMBOOK_MATHJAX")
    path = Path(env) if env else path
    if not path.is_file():
        raise BuildError(f"MathJax not found at {path}; run `make setup` "
                         "(it runs `npm pack mathjax@3.2.2`) "
                         "or set LLMBOOK_MATHJAX to a local tex-svg-full.js")
    return path


def prepare_stage(profile: str) -> Path:
    """Refresh the stage's copies of the book sources (executed chapters are kept)."""
    root, stage = _root(), stage_dir(profile)
    (stage / "chapters").mkdir(parents=True, exist_ok=True)
    # from a run killed mid-chapter
    for leftover in (stage / "chapters").glob(".*.partial.ipynb"):
        leftover.unlink()
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy2(root / name, stage / name)
    _copy_tree(root / "book", stage / "book")
    link = stage / "code"
    if not link.is_symlink():
        if link.exists():
            shutil.rmtree(link)
        link.symlink_to(root / "code", target_is_directory=True)
    return stage


def _tag_parameter_cells(notebook) -> None:
    """Hide the parameters cells in the rendered book; they stay in the notebook for
    papermill and nbval."""
    for cell in notebook.cells:
        tags = cell.setdefault("metadata", {}).setdefault("tags", [])
        if (("parameters" in tags or "injected-parameters" in tags)
                and "remove-cell" not in tags):
            tags.append("remove-cell")


def _describe_cell(source: Path, executed: Path, exec_count: int) -> str:
    """Name a failing cell by its number in the notebook as stored (papermill adds cells)
    and its first line."""
    import nbformat

    try:
        cells = nbformat.read(executed, as_version=4).cells
        code = next(c.source for c in cells
                    if c.cell_type == "code" and c.execution_count == exec_count)
        number = [c.source
                  for c in nbformat.read(source, as_version=4).cells].index(code) + 1
    except (ValueError, StopIteration, OSError):
        return f"the cell with execution count {exec_count}"
    first_line = code.strip().splitlines()[0] if code.strip() else ""
    return f"cell {number} ({first_line[:60]!r})"


def execute_chapter(source: Path, profile: str, package: str, *,
                    force: bool = False) -> tuple[str, float]:
    """Execute one chapter into the stage unless its executed copy is up to date. Returns
    (status, seconds)."""
    import nbformat
    import papermill
    from papermill.exceptions import PapermillExecutionError

    target = stage_dir(profile) / "chapters" / source.name
    if not force and stale_reason(source, profile, package) is None:
        return "up to date", 0.0
    fd, tmp_name = tempfile.mkstemp(prefix=f".{source.stem}.", suffix=".partial.ipynb",
                                    dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    start = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(source), str(tmp), parameters={"profile": profile}, cwd=str(source.parent),
            kernel_name="python3", progress_bar=False, log_output=False,
            # The kernel warns at start-up that it talks to us over TCP without encryption.
            # It listens on the loopback address only, with an HMAC-signed protocol, for the
            # length of one chapter: the warning says nothing a reader of the build output
            # can act on.
            extra_arguments=["--IPKernelApp.log_level=ERROR"],
        )
        seconds = time.perf_counter() - start
        executed = nbformat.read(tmp, as_version=4)
        _tag_parameter_cells(executed)
        executed.metadata["llmbook"] = {
            "key": execution_key(source, profile, package),
            "notebook": _notebook_digest(source),
            "package": package, "profile": profile, "seconds": round(seconds, 1),
        }
        nbformat.write(executed, tmp)
        tmp.replace(target)
    except PapermillExecutionError as exc:
        raise BuildError(f"chapters/{source.name} failed in "
                         f"{_describe_cell(source, tmp, exc.exec_count)}: "
                         f"{exc.ename}: {exc.evalue}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return "executed", seconds


def execute(profile: str, *, force: bool = False) -> None:
    """Run the chapters that are out of date, saying which run, why, and how long each
    took."""
    prepare_stage(profile)
    package = package_digest()
    sources = chapter_sources()
    if not sources:
        raise BuildError("no chapters found (chapters/NN_name.ipynb)")
    chapters = stage_dir(profile) / "chapters"
    stale = {p.name for p in chapters.glob("*.ipynb")} - {p.name for p in sources}
    for name in stale:  # a chapter renamed or deleted in the sources
        (chapters / name).unlink()
    reasons = {source: "--force" if force else stale_reason(source, profile, package)
               for source in sources}
    to_run = [source for source in sources if reasons[source] is not None]
    print(f"[{profile}] {len(to_run)} of {len(sources)} chapters to execute"
          + ("" if to_run else ": all up to date"), flush=True)
    for source in sources:
        if reasons[source] is None:
            print(f"[{profile}]   {source.name}: up to date", flush=True)
    total = 0.0
    for source in to_run:
        print(f"[{profile}]   {source.name}: executing ({reasons[source]}) ...", flush=True)
        _, seconds = execute_chapter(source, profile, package, force=True)
        total += seconds
        print(f"[{profile}]   {source.name}: executed in {seconds:.1f} s", flush=True)
    if to_run:
        print(f"[{profile}] executed {len(to_run)} chapters in {total:.1f} s")
    print(f"[{profile}] executed notebooks: {chapters}")


def _jupyter_book(stage: Path, builder: str) -> None:
    exe = Path(sys.executable).with_name("jupyter-book")
    command = [str(exe), "build", str(stage), "--builder", builder, "--all",
               "--warningiserror", "--keep-going"]
    result = subprocess.run(command, cwd=stage, text=True, capture_output=True)
    if result.returncode != 0:
        print(result.stdout[-20000:])
        print(result.stderr[-20000:], file=sys.stderr)
        raise BuildError(f"jupyter-book {builder} build failed (exit {result.returncode}); "
                         "the log is above")


# The setup cell (imports, paths) folds away in HTML, and what libraries print on stderr
# while loading (matplotlib's "building the font cache", for one) is not part of the
# chapter.
SETUP_TAGS = ("hide-input", "remove-stderr")


def _setup_cell(notebook):
    """The chapter's setup cell: its first code cell after the parameters (imports and
    paths)."""
    for cell in notebook.cells:
        tags = cell.get("metadata", {}).get("tags", [])
        if cell.cell_type == "code" and not (
                {"parameters", "injected-parameters", "remove-cell"} & set(tags)):
            return cell
    return None


def tag_setup_cells(profile: str) -> None:
    """Tag each staged chapter's setup cell (:data:`SETUP_TAGS`): in HTML a reader sees
    "Show code cell source" and opens it with one click; the PDF shows the code as before
    (myst-nb's ``hide-input`` acts on HTML only). The chapter sources are left alone: this
    is the editions' choice, so the build tags the executed copies."""
    import nbformat

    for path in sorted((stage_dir(profile) / "chapters").glob("[0-9]*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        cell = _setup_cell(notebook)
        if cell is None or set(SETUP_TAGS) <= set(cell.metadata.get("tags", [])):
            continue
        tags = cell.metadata.setdefault("tags", [])
        tags.extend(tag for tag in SETUP_TAGS if tag not in tags)
        atomic_write_text(path, nbformat.writes(notebook))


def html_dir(profile: str) -> Path:
    return stage_dir(profile) / "_build" / "html"


def html(profile: str) -> Path:
    stage = prepare_stage(profile)
    static = stage / "book" / "_static" / "mathjax"
    static.mkdir(parents=True, exist_ok=True)
    shutil.copy2(mathjax_source(), static / MATHJAX_FILE)
    tag_setup_cells(profile)
    start = time.perf_counter()
    _jupyter_book(stage, "html")
    index = html_dir(profile) / "index.html"
    _complete_redirect(index)
    print(f"[{profile}] HTML rendered in {time.perf_counter() - start:.1f} s: {index}")
    return index


_REFRESH = re.compile(r'http-equiv="refresh"\s+content="\d+;\s*url=([^"]+)"', re.IGNORECASE)


def refresh_target(page: str) -> str | None:
    """Where an HTML page's ``<meta http-equiv="refresh">`` sends the browser (the URL as
    written, relative or not), or None for a page that does not redirect."""
    match = _REFRESH.search(page)
    return match.group(1) if match else None


def _complete_redirect(index: Path) -> None:
    """Give Jupyter Book's root ``index.html`` (a bare meta refresh) an icon and a title.

    Without an icon the browser asks the server for ``/favicon.ico``, a 404 in the console
    of every reader who opens the book's address; and the stub has no link to follow.
    """
    target = refresh_target(index.read_text(encoding="utf-8"))
    if target is None:
        return  # a real page (the root document is index.md): nothing to complete
    target = html_lib.escape(target, quote=True)
    import yaml  # Jupyter Book's dependency, as is the build

    title = html_lib.escape(yaml.safe_load((_root() / "_config.yml").read_text())["title"])
    page = ('<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>{title}</title>\n"
            '<link rel="icon" href="_static/favicon.svg" type="image/svg+xml">\n'
            f'<meta http-equiv="refresh" content="0; url={target}">\n</head>\n'
            f'<body><p><a href="{target}">{title}</a></p></body>\n</html>\n')
    atomic_write_text(index, page)


def pdf_path(profile: str) -> Path:
    return stage_dir(profile) / "_build" / "latex" / "llmbook.pdf"


def pdf(profile: str) -> Path:
    if shutil.which("xelatex") is None:
        raise BuildError("xelatex is not installed; run `make tex` as root, "
                         "or see README.md for the Debian packages")
    stage = prepare_stage(profile)
    path = pdf_path(profile)
    # LaTeX reads its own .aux/.toc from the previous run; an interrupted run leaves them
    # truncated and every later run fails on them, and a stale PDF could pass the check.
    # Start the LaTeX side clean.
    if path.parent.exists():
        shutil.rmtree(path.parent)
    tag_setup_cells(profile)
    start = time.perf_counter()
    _jupyter_book(stage, "pdflatex")
    if not path.is_file():
        raise BuildError(f"the LaTeX build finished but {path} is missing")
    print(f"[{profile}] PDF rendered in {time.perf_counter() - start:.1f} s: {path}")
    return path


def chapter_titles() -> list[str]:
    """The first ``# `` heading of every chapter notebook."""
    import nbformat

    titles = []
    for source in chapter_sources():
        notebook = nbformat.read(source, as_version=4)
        for cell in notebook.cells:
            match = (re.search(r"^# (.+)$", cell.source, flags=re.M)
                     if cell.cell_type == "markdown" else None)
            if match:
                titles.append(match.group(1).strip())
                break
        else:
            raise BuildError(f"{source.name} has no '# Title' heading")
    return titles


def wrapped_code_lines(text: str) -> list[str]:
    """The code lines LaTeX had to wrap in the PDF's text (``pdftotext -layout``): each is
    printed up to the box's edge and continued on a line that starts with ↪. Returns the
    first part of each (up to the break), stripped."""
    lines = text.splitlines()
    return [lines[i - 1].strip().rstrip("\u2423").rstrip()
            for i in range(1, len(lines)) if lines[i].lstrip().startswith("\u21aa")]


def package_lines() -> set[str]:
    """Every source line of the package, stripped: what the book quotes."""
    return {line.strip() for path in PACKAGE_DIR.rglob("*.py")
            for line in path.read_text(encoding="utf-8").splitlines() if line.strip()}


def check_pdf(profile: str) -> None:
    """The PDF exists, every chapter title is in its text, LaTeX reported no missing glyph,
    and no line of the package that the book quotes was too long for its code box (LaTeX
    wraps it and marks the continuation with ↪). Wrapped lines of chapter cells and their
    outputs are counted and reported."""
    path = pdf_path(profile)
    if not path.is_file():
        raise BuildError(f"no PDF at {path}; build it first (python -m llmbook.build pdf)")
    text = subprocess.run(["pdftotext", "-layout", str(path), "-"], capture_output=True,
                          text=True, check=True).stdout
    flat = re.sub(r"\s+", " ", text)
    missing = [title for title in chapter_titles()
               if re.sub(r"\s+", " ", title) not in flat]
    log = path.with_suffix(".log").read_text(encoding="utf-8", errors="replace")
    glyphs = sorted(set(re.findall(r"Missing character: There is no (.+?) in font", log)))
    wrapped = wrapped_code_lines(text)
    source = package_lines()
    from_package = [w for w in wrapped if any(w and w in line for line in source)]
    overfull = len(re.findall(r"^Overfull \\hbox", log, flags=re.M))
    pages = subprocess.run(["pdfinfo", str(path)], capture_output=True, text=True,
                           check=True).stdout
    page_count = re.search(r"Pages:\s+(\d+)", pages).group(1)
    problems = []
    if missing:
        problems.append(f"chapter titles not found in the PDF text: {missing}")
    if glyphs:
        problems.append(f"LaTeX reported missing characters: {glyphs}")
    if from_package:
        problems.append(f"{len(from_package)} package lines wrap in the PDF (too long "
                        f"for the code box), e.g. {from_package[:3]}; shorten them (ruff's "
                        "line length in pyproject.toml keeps the package within the box)")
    if problems:
        raise BuildError("; ".join(problems))
    others = len(wrapped) - len(from_package)
    print(f"PDF check passed: {path} ({page_count} pages, "
          f"all {len(chapter_titles())} chapter titles, no missing glyphs, no wrapped "
          f"package lines; {others} wrapped lines of chapter cells and outputs; "
          f"{overfull} Overfull \\hbox warnings in the log)")
    if others:
        examples = [w[:60] for w in wrapped if w not in from_package][:5]
        print("  wrapped, e.g.: " + " | ".join(examples))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmbook.build",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("steps", nargs="+",
                        choices=["execute", "html", "pdf", "check", "all"])
    parser.add_argument("--profile", default="cpu", help=f"one of: {', '.join(PROFILES)}")
    parser.add_argument("--force", action="store_true", help="re-execute every chapter")
    args = parser.parse_args(argv)
    try:
        get_profile(args.profile)
        steps = ["execute", "html", "pdf", "check"] if "all" in args.steps else args.steps
        for step in steps:
            if step == "execute":
                execute(args.profile, force=args.force)
            elif step == "html":
                html(args.profile)
            elif step == "pdf":
                pdf(args.profile)
            elif step == "check":
                check_pdf(args.profile)
    except (BuildError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; executed chapters so far are kept, partial ones were discarded",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
