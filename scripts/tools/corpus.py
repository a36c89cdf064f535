"""English pretraining text from WordNet 3.0, for the embedded default model.

Sentences come from glosses, example sentences and relations (synonyms, hypernyms, antonyms),
the relations written in varied natural phrasings. The antonyms task's evaluation template
(`Here are two ... X and Y`) never appears: the model learns antonymy from other phrasings, and a
learned prompt must find that knowledge.

Two fixed, hash-chosen shares of WordNet never enter the corpus, so that what the model knows can
be told apart from what a prompt teaches it:
- held-out antonym pairs (`HELDOUT_PAIR_FRACTION` of the unordered pairs): no sentence holds both
  words of such a pair, in any order or phrasing (glosses such as "unconventional: not
  conventional" included). The choice is independent of the antonyms task's train/test split, so
  its test split has pairs seen and unseen in pretraining.
- held-out synsets (`HELDOUT_SYNSET_FRACTION`): none of their sentences is in the corpus; their
  glosses and examples measure the model's plain WordNet English (`heldout_gloss_sentences`).
"""

from __future__ import annotations

import hashlib
import os
import random
import re
from collections import defaultdict
from typing import Callable, Iterable, Iterator

from wordnet import Synset, antonym_pairs

FORBIDDEN = ("here are two", "here are some")
HELDOUT_PAIR_FRACTION = 0.15
HELDOUT_SYNSET_FRACTION = 0.01

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


def _as_sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + ("" if text.endswith((".", "!", "?")) else ".")


def _unit_hash(key: str) -> float:
    """A fixed pseudo-random number in [0, 1) for `key` (the same on every machine and Python)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64


def is_heldout_pair(a: str, b: str) -> bool:
    """Whether the antonym pair {a, b} (either order) is kept out of the corpus.

    Keyed by the unordered pair under its own salt, so it is independent of the task split
    (`tasks.split_examples` hashes "{seed}:{pair}").
    """
    return _unit_hash("heldout-antonym-pair:" + "\x1f".join(sorted((a, b)))) < HELDOUT_PAIR_FRACTION


def heldout_pairs(synsets: dict[tuple[str, int], Synset]) -> list[tuple[str, str]]:
    """The held-out ordered antonym pairs (both directions of each), sorted."""
    return [p for p in antonym_pairs(synsets) if is_heldout_pair(*p)]


HELDOUT_PAIRS_FILE = "heldout_pairs.tsv"  # beside a checkpoint pretrained on this corpus


def write_heldout_pairs(directory: str, pairs: Iterable[tuple[str, str]]) -> None:
    """The held-out pairs as a TSV (header word1, word2) in a checkpoint directory."""
    with open(os.path.join(directory, HELDOUT_PAIRS_FILE), "w") as f:
        f.write("word1\tword2\n")
        f.writelines(f"{a}\t{b}\n" for a, b in pairs)


def read_heldout_pairs(directory: str) -> list[tuple[str, str]]:
    """The pairs `write_heldout_pairs` wrote, in its order (FileNotFoundError if it never did)."""
    with open(os.path.join(directory, HELDOUT_PAIRS_FILE)) as f:
        return [tuple(line.rstrip("\n").split("\t")) for line in list(f)[1:]]


def is_heldout_synset(synset: Synset) -> bool:
    """Whether a synset's sentences are kept out of the corpus (to measure plain English on them)."""
    pos, offset = synset.key
    return _unit_hash(f"heldout-gloss-synset:{pos}:{offset}") < HELDOUT_SYNSET_FRACTION


def words_of(sentence: str) -> set[str]:
    """Lower-cased words of a sentence, with every hyphen-joined run of a compound ("air-to-air"
    gives "air-to-air", "air-to", "to-air", "air", "to"), so a pair is found however it is joined."""
    words = set()
    for compound in re.findall(r"[a-z]+(?:-[a-z]+)*", sentence.lower()):
        parts = compound.split("-")
        words.update("-".join(parts[i:j]) for i in range(len(parts)) for j in range(i + 1, len(parts) + 1))
    return words


def holds_any_pair(pairs: Iterable[tuple[str, str]]) -> Callable[[str], bool]:
    """A test of whether a sentence holds both words of one of `pairs` (in any order)."""
    partners: dict[str, set[str]] = defaultdict(set)
    for a, b in pairs:
        partners[a].add(b)
        partners[b].add(a)

    def holds(sentence: str) -> bool:
        words = words_of(sentence)
        return any(partners[w] & words for w in words if w in partners)

    return holds


def sentences(synsets: dict[tuple[str, int], Synset], seed: int, antonym_repeats: int = 4,
              other_fraction: float = 1.0) -> Iterator[str]:
    """One epoch of corpus sentences in a seeded random order.

    Every ordered antonym pair that is not held out appears `antonym_repeats` times in different
    phrasings; a random `other_fraction` of the synsets that are not held out contribute their
    gloss, examples, a synonym and a hypernym fact. No sentence holds a held-out antonym pair.
    """
    rng = random.Random(seed)
    out: list[str] = []
    for a, b in antonym_pairs(synsets):
        if is_heldout_pair(a, b):
            continue
        for template in rng.sample(ANTONYM_PHRASINGS, antonym_repeats):
            out.append(_fill(template, a, b))
    for s in synsets.values():
        if rng.random() >= other_fraction or is_heldout_synset(s):
            continue
        word = rng.choice(s.words)
        out.append(_fill(rng.choice(GLOSS_PHRASINGS[s.pos]), word, d=s.definition))
        out.extend(_as_sentence(e) for e in s.examples)
        others = [w for w in s.words if w != word]
        if others:
            out.append(_fill(rng.choice(SYNONYM_PHRASINGS), word, rng.choice(others)))
        hypernyms = [synsets[(pos, off)] for sym, off, pos, _, _ in s.pointers if sym == "@"]
        if hypernyms and s.pos in HYPERNYM_PHRASINGS:
            out.append(_fill(rng.choice(HYPERNYM_PHRASINGS[s.pos]), word, rng.choice(hypernyms[0].words)))
    rng.shuffle(out)
    holds_heldout_pair = holds_any_pair(heldout_pairs(synsets))
    for sentence in out:
        if any(f in sentence.lower() for f in FORBIDDEN) or holds_heldout_pair(sentence):
            continue
        yield sentence


def heldout_gloss_sentences(synsets: dict[tuple[str, int], Synset]) -> list[str]:
    """Gloss-like sentences of the held-out synsets: each gloss in one of its corpus phrasings
    (a fixed choice), and each example sentence.

    A gloss or example text that some other synset also has (a kept synset's text contains it,
    e.g. the example "electric current") is left out: the corpus may hold it.
    """
    held = [s for s in synsets.values() if is_heldout_synset(s)]
    kept_text = "\n".join(t.lower() for s in synsets.values() if not is_heldout_synset(s)
                          for t in (s.definition, *s.examples))
    rng = random.Random(0)
    out = []
    for s in held:
        word, template = rng.choice(s.words), rng.choice(GLOSS_PHRASINGS[s.pos])
        if s.definition.lower() not in kept_text:
            out.append(_fill(template, word, d=s.definition))
        out.extend(_as_sentence(e) for e in s.examples if e.lower() not in kept_text)
    return out
