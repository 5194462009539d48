"""Tasks from the plays whose answers a program checks, on held-out scenes. Chapter 8.

Four tasks, each a generator of :class:`Item` and a checker:

- ``speaker``: who speaks this passage? The answer is one of the item's candidates (the
  true speaker and others from the same play, in alphabetical order so that position
  gives nothing away).
- ``play``: which play is this passage from? One of a fixed list of plays.
- ``finish``: finish this line of verse, given the line before and the line's first
  half.
- ``meter``: write a line of ten syllables continuing a given line; no reference answer,
  the reward is :func:`llmbook.align.meter.guarded_meter_reward`.

Items come from the scenes of one split (:mod:`llmbook.align.scenes`), so train,
validation and test items never share a scene, and are drawn with a seeded generator:
the same seed gives the same items on every machine.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from llmbook.align import meter
from llmbook.align.scenes import SceneSplitConfig, scenes_of_split

TASKS = ("speaker", "play", "finish", "meter")
# Four plays with distinct worlds (Scotland, Denmark, Rome, Athens' wood): a fixed list.
DEFAULT_PLAYS = ("macbeth", "hamlet", "julius-caesar", "a-midsummer-night-s-dream")
_NON_SPEAKERS = {"ALL", "BOTH", "SEVERAL"}


@dataclass(frozen=True)
class Item:
    task: str
    scene: str  # Scene.key, e.g. "macbeth/003"
    prompt: str
    answer: str  # the reference answer ("" for the meter task, which has none)
    choices: tuple[str, ...] = ()  # the candidates, for multiple-choice tasks
    context: tuple[str, ...] = field(default=())  # lines a meter answer may not copy

    def messages(self, answer: str | None = None) -> list[dict[str, str]]:
        """The item as a conversation for :func:`.chat.render_conversation`
        (its prompt, and ``answer``, the reference when None, as the reply)."""
        reply = self.answer if answer is None else answer
        return [
            {"role": "user", "content": self.prompt},
            {"role": "assistant", "content": reply},
        ]


@dataclass(frozen=True)
class TaskConfig:
    n_choices: int = 4  # candidate speakers per item
    max_passage_chars: int = (
        160  # keeps a prompt inside the cpu model's 128-token context
    )
    plays: tuple[str, ...] = DEFAULT_PLAYS
    scenes: SceneSplitConfig = SceneSplitConfig()

    def __post_init__(self) -> None:
        if self.n_choices < 2 or len(self.plays) < 2:
            raise ValueError(
                f"a choice needs at least 2 candidates, got n_choices="
                f"{self.n_choices} and {len(self.plays)} plays"
            )


def _passage(lines: list[str], limit: int) -> str:
    out: list[str] = []
    for line in lines:
        if out and len("\n".join(out + [line])) > limit:
            break
        out.append(line)
    return "\n".join(out)[:limit]


def _normalise(text: str) -> str:
    return " ".join(re.findall(r"[a-z']+", text.lower()))


def _speaker_items(scenes, config: TaskConfig, rng: random.Random) -> list[Item]:
    by_play: dict[str, set[str]] = {}
    for scene in scenes:
        names = {s.speaker for s in scene.speeches if s.speaker}
        by_play.setdefault(scene.play, set()).update(names - _NON_SPEAKERS)
    items = []
    for scene in scenes:
        others = sorted(by_play[scene.play])
        for speech in scene.speeches:
            if speech.speaker not in others or len(others) < config.n_choices:
                continue
            wrong = rng.sample(
                [n for n in others if n != speech.speaker], config.n_choices - 1
            )
            choices = tuple(sorted(wrong + [speech.speaker]))
            passage = _passage(speech.lines, config.max_passage_chars)
            prompt = f"Who speaks these lines? ({', '.join(choices)})\n{passage}"
            items.append(Item("speaker", scene.key, prompt, speech.speaker, choices))
    return items


def _play_items(scenes, config: TaskConfig, rng: random.Random) -> list[Item]:
    titles = {s.play: s.title for s in scenes}
    choices = tuple(titles.get(p, p) for p in config.plays)
    items = []
    for scene in scenes:
        if scene.play not in config.plays:
            continue
        for speech in scene.speeches:
            if sum(len(line) for line in speech.lines) < 60:
                continue  # "My lord?" could come from any play
            passage = _passage(speech.lines, config.max_passage_chars)
            prompt = f"Which play is this from? ({', '.join(choices)})\n{passage}"
            items.append(Item("play", scene.key, prompt, titles[scene.play], choices))
    return items


def _verse_pairs(scenes):
    """(scene, previous line, line) for lines that look like blank verse: ten syllables,
    starting with a capital, continuing a line of the same speech."""
    for scene in scenes:
        for speech in scene.speeches:
            for before, line in zip(speech.lines, speech.lines[1:]):
                if line[:1].isupper() and meter.syllable_count(line) == 10:
                    yield scene, before, line


def _finish_items(scenes, config: TaskConfig, rng: random.Random) -> list[Item]:
    items = []
    for scene, before, line in _verse_pairs(scenes):
        words = line.split()
        if len(words) < 6:
            continue
        cut = len(words) // 2
        head, tail = " ".join(words[:cut]), " ".join(words[cut:])
        prompt = f"Finish this line of verse.\n{before}\n{head} ..."
        items.append(Item("finish", scene.key, prompt, tail))
    return items


def _meter_items(scenes, config: TaskConfig, rng: random.Random) -> list[Item]:
    return [
        Item(
            "meter",
            scene.key,
            f"Write the next line, in ten syllables.\n{before}\n{line}",
            "",
            context=(before, line),
        )
        for scene, before, line in _verse_pairs(scenes)
    ]


_GENERATORS = {
    "speaker": _speaker_items,
    "play": _play_items,
    "finish": _finish_items,
    "meter": _meter_items,
}


def make_items(
    task: str,
    split: str,
    n: int | None = None,
    seed: int = 0,
    config: TaskConfig = TaskConfig(),
) -> list[Item]:
    """``n`` items of ``task`` from the scenes of ``split`` (all of them when None),
    drawn with ``seed``: the same arguments give the same items."""
    if task not in _GENERATORS:
        raise ValueError(f"unknown task {task!r}; tasks are {TASKS}")
    rng = random.Random(f"{task}/{split}/{seed}")
    items = _GENERATORS[task](scenes_of_split(split, config.scenes), config, rng)
    if n is not None:
        if not 0 < n <= len(items):
            raise ValueError(
                f"asked for {n} {task} items but split {split!r} has "
                f"{len(items)}; ask for at most that many"
            )
        items = rng.sample(items, n)
    return items


def reward(item: Item, answer: str) -> float:
    """The reward of ``answer`` for ``item``, in [0, 1].

    ``speaker`` and ``play``: 1 if the answer's first line names the right candidate
    (case and punctuation ignored), else 0. ``finish``: the F1 of the answer's words
    against the reference's (1 for an exact continuation). ``meter``: the guarded meter
    reward.
    """
    first = meter.first_line(answer)
    if item.task in ("speaker", "play"):
        return float(_normalise(first) == _normalise(item.answer))
    if item.task == "finish":
        got, want = _normalise(first).split(), _normalise(item.answer).split()
        common = sum(min(got.count(w), want.count(w)) for w in set(got))
        if common == 0:
            return 0.0
        precision, recall = common / len(got), common / len(want)
        return 2 * precision * recall / (precision + recall)
    if item.task == "meter":
        return meter.guarded_meter_reward(first, copied_from=item.context)
    raise ValueError(f"unknown task {item.task!r}; tasks are {TASKS}")


def check(item: Item, answer: str) -> bool:
    """Whether ``answer`` is fully correct: a reward of 1."""
    return reward(item, answer) == 1.0
