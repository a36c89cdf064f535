"""English pretraining text from WordNet 3.0, for the embedded default model.

Sentences come from glosses, example sentences and relations (synonyms, hypernyms, antonyms),
the relations written in varied natural phrasings. The antonyms task's evaluation template
(`Here are two ... X and Y`) never appears: the model learns antonymy from other phrasings, and a
learned prompt must find that knowledge.
"""

from __future__ import annotations

import random
from typing import Iterator

from jaxprompt.wordnet import Synset, antonym_pairs

FORBIDDEN = ("here are two", "here are some")

ANTONYM_PHRASINGS = (
    "The opposite of {a} is {b}.",
    "{A} is the opposite of {b}.",
    "{A} is the reverse of {b}.",
    "The words {a} and {b} are opposites.",
    "The words {a} and {b} have opposite meanings.",
    "{A} and {b} are antonyms.",
    "The antonym of {a} is {b}.",
    "An antonym of {a} is {b}.",
    "{A} means the opposite of {b}.",
    "{A} contrasts with {b}.",
    "Something {a} is not {b}.",
    "If it is not {a}, it may be {b}.",
    "Antonyms: {a}, {b}.",
    "{a} versus {b}",
    "Not {a} but {b}.",
    "She said {a}, he said {b}: opposite words.",
    "One word is {a}, its opposite is {b}.",
    "{A} is to {b} as up is to down.",
)
SYNONYM_PHRASINGS = (
    "{A} is another word for {b}.",
    "{A} means the same as {b}.",
    "The words {a} and {b} are synonyms.",
    "A synonym of {a} is {b}.",
    "{A}, also called {b}.",
)
HYPERNYM_PHRASINGS = {
    "n": ("A {a} is a kind of {b}.", "Every {a} is a {b}.", "{A} is a type of {b}."),
    "v": ("To {a} is a way to {b}.", "To {a} is to {b} in a certain way."),
}
GLOSS_PHRASINGS = {
    "n": ("{A}: {d}.", "A {a} is {d}.", "The word {a} means {d}."),
    "v": ("To {a} means to {d}.", "{A}: {d}."),
    "a": ("{A} means {d}.", "Something {a} is {d}.", "{A}: {d}."),
    "s": ("{A} means {d}.", "Something {a} is {d}."),
    "r": ("{A} means {d}.", "{A}: {d}."),
}


def _fill(template: str, a: str, b: str = "", d: str = "") -> str:
    return template.format(a=a, A=a[:1].upper() + a[1:], b=b, d=d)


def sentences(synsets: dict[tuple[str, int], Synset], seed: int, antonym_repeats: int = 4,
              other_fraction: float = 1.0) -> Iterator[str]:
    """One epoch of corpus sentences in a seeded random order.

    Every ordered antonym pair appears `antonym_repeats` times in different phrasings; a random
    `other_fraction` of the synsets contribute their gloss, examples, a synonym and a hypernym fact.
    """
    rng = random.Random(seed)
    out: list[str] = []
    for a, b in antonym_pairs(synsets):
        for template in rng.sample(ANTONYM_PHRASINGS, antonym_repeats):
            out.append(_fill(template, a, b))
    for s in synsets.values():
        if rng.random() >= other_fraction:
            continue
        word = rng.choice(s.words)
        out.append(_fill(rng.choice(GLOSS_PHRASINGS[s.pos]), word, d=s.definition))
        out.extend(e[:1].upper() + e[1:] + ("" if e.endswith((".", "!", "?")) else ".") for e in s.examples)
        others = [w for w in s.words if w != word]
        if others:
            out.append(_fill(rng.choice(SYNONYM_PHRASINGS), word, rng.choice(others)))
        hypernyms = [synsets[(pos, off)] for sym, off, pos, _, _ in s.pointers if sym == "@"]
        if hypernyms and s.pos in HYPERNYM_PHRASINGS:
            out.append(_fill(rng.choice(HYPERNYM_PHRASINGS[s.pos]), word, rng.choice(hypernyms[0].words)))
    rng.shuffle(out)
    for sentence in out:
        if any(f in sentence.lower() for f in FORBIDDEN):
            continue
        yield sentence
