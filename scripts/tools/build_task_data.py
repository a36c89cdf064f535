"""Builds the built-in tasks' data files from WordNet 3.0 (Debian: apt-get install wordnet-base).

    python scripts/tools/build_task_data.py      # writes jaxprompt/data/builtin/{antonyms.tsv, paraphrase.jsonl,
                                           #   supersense.tsv, antonym_choice.jsonl}
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil

from wordnet import (
    DEFAULT_DIR,
    antonym_pairs,
    antonym_pairs_with_pos,
    first_noun_senses,
    read_synsets,
    synonym_paraphrases,
)

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "jaxprompt", "data", "builtin")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--wordnet", default=DEFAULT_DIR)
    p.add_argument("--out", default=DATA)
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    synsets = read_synsets(args.wordnet)
    pairs = antonym_pairs(synsets)
    with open(os.path.join(args.out, "antonyms.tsv"), "w") as f:
        f.write("word1\tword2\n")
        f.writelines(f"{a}\t{b}\n" for a, b in pairs)
    paraphrases = synonym_paraphrases(synsets)
    with open(os.path.join(args.out, "paraphrase.jsonl"), "w") as f:
        f.writelines(json.dumps({"sentence": a, "paraphrase": b}) + "\n" for a, b in paraphrases)
    supersenses = supersense_rows(synsets, args.wordnet)
    with open(os.path.join(args.out, "supersense.tsv"), "w") as f:
        f.write("word\tcategory\n")
        f.writelines(f"{w}\t{c}\n" for w, c in supersenses)
    choices = antonym_choice_rows(synsets)
    with open(os.path.join(args.out, "antonym_choice.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in choices)
    print(f"{len(supersenses)} supersense nouns, {len(choices)} antonym choices")
    copyright = "/usr/share/doc/wordnet-base/copyright"
    if os.path.isfile(copyright):
        shutil.copy(copyright, os.path.join(args.out, "WORDNET_LICENSE"))
    print(f"{len(pairs)} antonym pairs, {len(paraphrases)} paraphrase pairs -> {args.out}")


# the supersense task's classes: concrete lexicographer categories, one GPT-2 token each
SUPERSENSE_CLASSES = ("animal", "artifact", "body", "food", "location", "person", "plant", "time")
PER_CLASS = 250


def supersense_rows(synsets, directory: str) -> list[tuple[str, str]]:
    """Up to PER_CLASS nouns per class (the most often tagged first), by their first sense's category."""
    by_class: dict[str, list[tuple[int, str]]] = {c: [] for c in SUPERSENSE_CLASSES}
    for noun, category, tagged in first_noun_senses(synsets, directory):
        if category in by_class and noun.islower():
            by_class[category].append((-tagged, noun))
    rows = [(noun, c) for c in SUPERSENSE_CLASSES for _, noun in sorted(by_class[c])[:PER_CLASS]]
    return sorted(rows)


def antonym_choice_rows(synsets, n_options: int = 4, seed: int = 0) -> list[dict]:
    """Per antonym pair: the antonym among `n_options` words, the others antonym-pair words of the
    same part of speech that are not antonyms of the first word."""
    with_pos = antonym_pairs_with_pos(synsets)
    words_by_pos: dict[str, list[str]] = {}
    antonyms: dict[str, set[str]] = {}
    for (a, b), pos in sorted(with_pos.items()):
        words_by_pos.setdefault(pos, []).append(b)
        antonyms.setdefault(a, set()).add(b)
    vocab = {pos: sorted(set(ws)) for pos, ws in words_by_pos.items()}
    rng = random.Random(seed)
    rows = []
    for (a, b), pos in sorted(with_pos.items()):
        pool = [w for w in rng.sample(vocab[pos], min(len(vocab[pos]), 4 * n_options))
                if w != a and w not in antonyms[a]][:n_options - 1]
        if len(pool) < n_options - 1:
            continue
        options = pool + [b]
        rng.shuffle(options)
        rows.append({"word1": a, "word2": b, "options": options})
    return rows


if __name__ == "__main__":
    main()
