"""The embedded model's pretraining corpus and WordNet extraction."""

from __future__ import annotations

import os
import re

import pytest

from jaxprompt import wordnet

pytestmark = pytest.mark.skipif(not os.path.isfile(os.path.join(wordnet.DEFAULT_DIR, "data.noun")),
                                reason="WordNet 3.0 not installed (apt-get install wordnet-base)")


@pytest.fixture(scope="module")
def synsets():
    return wordnet.read_synsets()


def test_antonym_pairs_match_the_shipped_file(synsets):
    from jaxprompt.tasks import DATA_DIR

    pairs = wordnet.antonym_pairs(synsets)
    assert 6000 < len(pairs) < 7000
    assert ("hot", "cold") in pairs and ("cold", "hot") in pairs and ("utopia", "dystopia") in pairs
    with open(os.path.join(DATA_DIR, "antonyms.tsv")) as f:
        shipped = [tuple(line.rstrip("\n").split("\t")) for line in f][1:]
    assert shipped == pairs


def test_corpus_never_shows_the_evaluation_template(synsets):
    from jaxprompt.corpus import sentences

    text = list(sentences(synsets, seed=0, antonym_repeats=8, other_fraction=0.2))
    assert not any("here are two" in s.lower() for s in text)
    # the knowledge is there in other phrasings: every antonym pair, both directions
    words = [set(re.findall(r"[\w-]+", s.lower())) for s in text]
    for a, b in wordnet.antonym_pairs(synsets)[::400]:
        assert any({a, b} <= w for w in words), (a, b)
    assert sum(("opposite" in s or "antonym" in s or "reverse" in s) for s in text) > 20000
