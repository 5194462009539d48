"""Counting syllables in English verse, and a meter reward hard to game. Chapter 8.

A blank-verse line of Shakespeare has ten syllables (iambic pentameter: five pairs, weak
then strong). A program can check the count, so "write a line of ten syllables" is a
task with a *verifiable reward*, the kind used to train reasoning models with
reinforcement learning.

The counter is rule-based, as a reader would count by ear: each group of vowel letters
is a syllable, then corrections for the spellings where English letters lie (a silent
final ``e``, ``-ed`` and ``-es`` that add no syllable, vowel pairs said as two
syllables), and a small dictionary of exceptions. Shakespeare's own elisions (``th'``,
``o'er``, ``belov'd``) need no rule: dropping the apostrophe leaves a word the rules
count correctly. The tests measure the counter on known lines and against the CMU
Pronouncing Dictionary.

A reward that only counts syllables is easy to satisfy without writing verse: ten
monosyllables, one word ten times, or a line copied from the prompt.
:func:`hacking_flags` names these tricks and :func:`guarded_meter_reward` pays nothing
for them (the chapter measures the difference).
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Collection, Iterable

TARGET_SYLLABLES = 10

# Words the rules get wrong, as a modern reader of Shakespeare says them.
EXCEPTIONS: dict[str, int] = {
    "sometime": 2,
    "sometimes": 2,
    "something": 2,
    "somewhat": 2,
    "therefore": 2,
    "wherefore": 2,
    "whereof": 2,
    "hereafter": 3,
    "evermore": 3,
    "forever": 3,
    "every": 2,
    "cruel": 2,
    "duel": 2,
    "fuel": 2,
    "quiet": 2,
    "poet": 2,
    "poem": 2,
    "poesy": 3,
    "romeo": 3,
    "juliet": 3,
    "business": 2,
    "evening": 2,
    "prithee": 2,
    "naked": 2,
    "wicked": 2,
    "wretched": 2,
    "ragged": 2,
    "beloved": 3,
    "isle": 1,
    "farewell": 2,
    "gloucester": 2,
    "marriage": 2,
    "carriage": 2,
    "sovereign": 2,
    "sovereignty": 3,
    "parliament": 3,
    "george": 1,
    "achilles": 3,
    "hercules": 3,
    "cleopatra": 4,
    "aeneas": 3,
    "create": 2,
    "created": 3,
    "idea": 3,
    "being": 2,
    "lineage": 3,
    "useless": 2,
    "doubtless": 2,
    "science": 2,
    "violent": 3,
    "riot": 2,
    "lionel": 3,
    "hour": 1,
    "hours": 1,
    "our": 1,
    "ours": 1,
    "fire": 1,
    "fires": 1,
    "desire": 2,
    "desires": 2,
    "inquire": 2,
    "require": 2,
    "hire": 1,
    "tire": 1,
    "whence": 1,
    "one": 1,
    "once": 1,
    "are": 1,
    "gone": 1,
    "done": 1,
    "none": 1,
    "there's": 1,
    "where's": 1,
}

# Second parts of words after which the first part's final e is silent: "safety".
_SUFFIXES = "ly|ful|less|ment|ness|ty|wise|forth|some|hood|dom|by|of|with"
_WORD = re.compile(r"[a-z']+")


def _letters(word: str) -> str:
    return word.replace("'", "")


def _vowel_mask(word: str) -> list[bool]:
    """Which letters act as vowels: a, e, i, o, u always; y only where it is not a
    consonant (a word's first letter before a vowel, as in "yet", or between vowels, as
    in "player")."""
    mask = [ch in "aeiou" for ch in word]
    for i, ch in enumerate(word):
        if ch == "y":
            before = i > 0 and mask[i - 1]
            after = i + 1 < len(word) and word[i + 1] in "aeiou"
            mask[i] = not (after and (i == 0 or before))
    return mask


def _vowel_groups(word: str, mask: list[bool]) -> int:
    return sum(1 for i, v in enumerate(mask) if v and (i == 0 or not mask[i - 1]))


def _consonant(word: str, mask: list[bool], i: int) -> bool:
    return 0 <= i < len(word) and not mask[i]


@lru_cache(maxsize=1 << 16)  # verse repeats its words: count each once
def word_syllables(word: str) -> int:
    """The syllables of one word (letters and apostrophes; other characters are
    ignored).

    A word with no vowel left is an elision (``th'`` before a vowel): 0 syllables.
    Otherwise at least 1.
    """
    word = "".join(_WORD.findall(word.lower()))
    if word in EXCEPTIONS:
        return EXCEPTIONS[word]
    elided = "'" in word
    word = _letters(word)
    if word in EXCEPTIONS:
        return EXCEPTIONS[word]
    if not word:
        return 0
    mask = _vowel_mask(word)
    count = _vowel_groups(word, mask)
    if count == 0:
        return 0 if elided else 1
    n = len(word)
    # Silent letters at the end: "love", "makes", "loved" (but "table", "horses",
    # "wanted"). "table", "sceptre", "nobles", "troubled", "hundred" keep their e: a
    # consonant, then l or r.
    sounded_e = re.search(r"[^aeiouylr][lr]e[sd]?$", word) is not None
    if word.endswith("e") and not word.endswith("ee") and count > 1 and not sounded_e:
        if not re.search(
            r"[^gq]ue$", word
        ):  # "virtue", "issue" (but "tongue", "league")
            count -= 1
    elif word.endswith("es") and count > 1 and not sounded_e:
        if word.endswith(("gues", "ques")) or (
            _consonant(word, mask, n - 3)
            and word[n - 3] not in "sxzcg"
            and not word.endswith(("ches", "shes"))
        ):
            count -= 1
    elif word.endswith("ed") and count > 1 and not sounded_e:
        if _consonant(word, mask, n - 3) and word[n - 3] not in "td":
            count -= 1
    # A silent e ending the first part of a word: "lovely", "careless", "safety",
    # "likewise".
    if (
        re.search(
            rf"[^aeiouy]e({_SUFFIXES})$",
            word,
        )
        and count > 1
    ):
        count -= 1
    # Vowel pairs said as two syllables (hiatus): "lion", "glorious", "trial", "being",
    # "usual", "triumph", "obedience"; not after the consonants that make them one
    # ("nation", "special", "opinion", "William").
    one = r"(?<![tscxg])(?<!sh)(?<!ll)(?<![aeiou][nl])"
    count += len(
        re.findall(
            rf"{one}io|{one}ia|{one}iu|[aeiou]ing|(?<![qg])ua|eo(?!p)"
            r"|(?<![cst])ien[ct]|iety",
            word,
        )
    )
    count += len(re.findall(r"[^aeiou]ying", word))  # "dying", "flying": y then i
    return max(count, 1)


def words_of(line: str) -> list[str]:
    """The words of a line, lower-cased, with apostrophes kept (``o'er``, ``th'``)."""
    return [
        w for w in _WORD.findall(line.lower().replace("\u2019", "'")) if w.strip("'")
    ]


def syllable_count(line: str) -> int:
    """The syllables of a line: the sum over its words."""
    return sum(word_syllables(word) for word in words_of(line))


def first_line(answer: str) -> str:
    """The first line of an answer, without the blanks around the answer: the only line
    any reward reads ("" for an empty answer)."""
    return answer.strip().split("\n", 1)[0]


def meter_reward(line: str, target: int = TARGET_SYLLABLES) -> float:
    """A reward in [0, 1]: 1 for exactly ``target`` syllables, falling by 0.2 for each
    syllable too many or too few (``1 - |n - target| / 5``, floored at 0). Only the
    first line counts."""
    if target < 1:
        raise ValueError(f"target must be a positive number of syllables, got {target}")
    first = first_line(line)
    n = syllable_count(first)
    if n == 0:
        return 0.0
    return max(0.0, 1.0 - abs(n - target) / 5.0)


# Consecutive one-syllable words. A cost: 9.4% of Shakespeare's ten-syllable lines
# (validation scenes) are all monosyllables and are flagged too; the chapter weighs this
# against the hack.
MAX_MONOSYLLABLE_RUN = 8
MAX_WORD_REPEATS = 2  # times one word of three letters or more may occur in a line


def hacking_flags(
    line: str,
    copied_from: Iterable[str] = (),
    vocabulary: Collection[str] | None = None,
) -> list[str]:
    """How ``line`` satisfies a syllable count without being verse (empty: no way).

    - ``"monosyllables"``: a run of more than :data:`MAX_MONOSYLLABLE_RUN` one-syllable
      words;
    - ``"repeated word"``: a word of three letters or more used more than
      :data:`MAX_WORD_REPEATS` times;
    - ``"copied"``: the line equals one of ``copied_from`` (e.g. the prompt), ignoring
      case and punctuation;
    - ``"unknown words"``: with a ``vocabulary``, fewer than 80% of its words are in it.
    """
    first = first_line(line)
    words = words_of(first)
    flags = []
    run = longest = 0
    for word in words:
        run = run + 1 if word_syllables(word) == 1 else 0
        longest = max(longest, run)
    if longest > MAX_MONOSYLLABLE_RUN:
        flags.append("monosyllables")
    counts: dict[str, int] = {}
    for word in words:
        if len(_letters(word)) >= 3:
            counts[word] = counts.get(word, 0) + 1
    if any(n > MAX_WORD_REPEATS for n in counts.values()):
        flags.append("repeated word")
    if words and any(words == words_of(other) for other in copied_from):
        flags.append("copied")
    if vocabulary is not None and words:
        known = sum(_letters(w) in vocabulary or w in vocabulary for w in words)
        if known < 0.8 * len(words):
            flags.append("unknown words")
    return flags


def guarded_meter_reward(
    line: str,
    target: int = TARGET_SYLLABLES,
    copied_from: Iterable[str] = (),
    vocabulary: Collection[str] | None = None,
) -> float:
    """:func:`meter_reward`, but 0 for a line that :func:`hacking_flags` flags."""
    if hacking_flags(line, copied_from, vocabulary):
        return 0.0
    return meter_reward(line, target)
