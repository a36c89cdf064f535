"""The embedded model's pretraining corpus and WordNet extraction."""

from __future__ import annotations

import os
import re
from collections import defaultdict

import corpus  # scripts/tools/, on the path from conftest.py
import pytest
import wordnet

from jaxprompt.paths import DEFAULT_MODEL

pytestmark = pytest.mark.skipif(not os.path.isfile(os.path.join(wordnet.DEFAULT_DIR, "data.noun")),
                                reason="WordNet 3.0 not installed (apt-get install wordnet-base)")


@pytest.fixture(scope="module")
def synsets():
    return wordnet.read_synsets()


@pytest.fixture(scope="module")
def widest_corpus(synsets):
    """One epoch with every phrasing of every kept pair and every kept synset's sentences."""
    return list(corpus.sentences(synsets, seed=0, antonym_repeats=len(corpus.ANTONYM_PHRASINGS), other_fraction=1.0))


def test_antonym_pairs_match_the_shipped_file(synsets):
    from jaxprompt.data.tasks import DATA_DIR

    pairs = wordnet.antonym_pairs(synsets)
    assert 6000 < len(pairs) < 7000
    assert ("hot", "cold") in pairs and ("cold", "hot") in pairs and ("utopia", "dystopia") in pairs
    with open(os.path.join(DATA_DIR, "antonyms.tsv")) as f:
        shipped = [tuple(line.rstrip("\n").split("\t")) for line in f][1:]
    assert shipped == pairs


def test_corpus_never_shows_the_evaluation_template(synsets, widest_corpus):
    assert not any("here are two" in s.lower() for s in widest_corpus)
    # the knowledge is there in other phrasings: every pair not held out, both directions
    held = set(corpus.heldout_pairs(synsets))
    sample = [p for p in wordnet.antonym_pairs(synsets) if p not in held][::400]
    wanted = {w for p in sample for w in p}
    words = [set(re.findall(r"[\w-]+", s.lower())) & wanted for s in widest_corpus]
    for a, b in sample:
        assert any({a, b} <= w for w in words), (a, b)
    assert sum(("opposite" in s or "antonym" in s or "reverse" in s) for s in widest_corpus) > 50000


def test_heldout_pairs_are_a_fixed_share_apart_from_the_task_split(synsets):
    from jaxprompt.data.tasks import get_task

    pairs = wordnet.antonym_pairs(synsets)
    held = corpus.heldout_pairs(synsets)
    assert all((b, a) in held for a, b in held)  # a pair and its reverse together
    unordered = {frozenset(p) for p in pairs}
    assert 0.13 < len({frozenset(p) for p in held}) / len(unordered) < 0.17
    # independent of the train/validation/test split: every split holds seen and unseen pairs
    for split, rows in get_task("antonyms").load(seed=0).items():
        unseen = sum((r["word1"], r["word2"]) in set(held) for r in rows)
        assert 0.10 < unseen / len(rows) < 0.20, (split, unseen, len(rows))
    # the list shipped beside the embedded model is the one this corpus holds out
    assert corpus.read_heldout_pairs(DEFAULT_MODEL) == held


def _letter_runs(sentence: str) -> set[str]:
    return set(re.split(r"[^a-z]+", sentence.lower()))


def test_no_heldout_pair_in_the_corpus_in_any_order_or_phrasing(synsets, widest_corpus):
    held = corpus.heldout_pairs(synsets)
    partners = defaultdict(set)
    for a, b in held:
        partners[a].add(b)
    hyphenated = defaultdict(list)  # first letter run -> held-out words with hyphens
    for w in partners:
        if not w.isalpha():
            hyphenated[re.split(r"[^a-z]+", w)[0]].append(w)
    found = 0
    for sentence in widest_corpus:
        # a word is in a sentence when no letter touches it on either side
        words = _letter_runs(sentence)
        words |= {w for run in words & hyphenated.keys() for w in hyphenated[run]
                  if re.search(rf"(?<![a-z]){re.escape(w)}(?![a-z])", sentence.lower())}
        for w in words & partners.keys():
            assert not partners[w] & words, (sentence, w, partners[w] & words)
        found += "opposite" in sentence
    # the filter keeps the rest: every phrasing of each kept ordered pair, some with "opposite"
    n_kept = len(wordnet.antonym_pairs(synsets)) - len(held)
    assert found > 6 * n_kept


def _renderings(synset) -> list[tuple[str, str]]:
    """(gloss or example text, a sentence the corpus could make of it) for one synset."""
    out = []
    for word in synset.words:
        out.extend((synset.definition, t.format(a=word, A=word[:1].upper() + word[1:], d=synset.definition))
                   for t in corpus.GLOSS_PHRASINGS[synset.pos])
    out.extend((e, e[:1].upper() + e[1:] + ("" if e.endswith((".", "!", "?")) else ".")) for e in synset.examples)
    return out


def test_heldout_synsets_never_in_the_corpus(synsets):
    text = list(corpus.sentences(synsets, seed=0, antonym_repeats=1, other_fraction=1.0))
    held = [s for s in synsets.values() if corpus.is_heldout_synset(s)]
    assert 0.008 < len(held) / len(synsets) < 0.012
    kept = {sentence for s in synsets.values() if not corpus.is_heldout_synset(s) for _, sentence in _renderings(s)}
    only_held = {sentence for s in held for _, sentence in _renderings(s)} - kept
    assert len(only_held) > 2000
    assert not only_held & set(text)
    # the measurement sentences: none is made of a text that a gloss or example sentence of the
    # corpus holds, even inside a longer one
    gloss = set(corpus.heldout_gloss_sentences(synsets))
    assert len(gloss) > 1000 and gloss <= only_held
    with open(os.path.join(DEFAULT_MODEL, "heldout_gloss.txt")) as f:  # shipped beside the embedded model
        assert f.read().splitlines() == corpus.heldout_gloss_sentences(synsets)
    joined = "\n".join(t for t in text if t in kept).lower()
    for s in held[::5]:  # a sample: each substring search reads the whole corpus
        for core, sentence in _renderings(s):
            assert sentence not in gloss or core.lower() not in joined, (core, sentence)
