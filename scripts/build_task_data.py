"""Builds the built-in tasks' data files from WordNet 3.0 (Debian: apt-get install wordnet-base).

    python scripts/build_task_data.py      # writes jaxprompt/data/{antonyms.tsv, paraphrase.jsonl}
"""

from __future__ import annotations

import argparse
import json
import os
import shutil

from jaxprompt.wordnet import DEFAULT_DIR, antonym_pairs, read_synsets, synonym_paraphrases

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "jaxprompt", "data")


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
    copyright = "/usr/share/doc/wordnet-base/copyright"
    if os.path.isfile(copyright):
        shutil.copy(copyright, os.path.join(args.out, "WORDNET_LICENSE"))
    print(f"{len(pairs)} antonym pairs, {len(paraphrases)} paraphrase pairs -> {args.out}")


if __name__ == "__main__":
    main()
