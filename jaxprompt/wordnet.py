"""A reader for the WordNet 3.0 database files (`data.noun`, `data.verb`, `data.adj`, `data.adv`).

Used to build the shipped antonym pairs and the embedded model's pretraining corpus. Debian's
`wordnet-base` installs the files under /usr/share/wordnet.
"""

from __future__ import annotations

import dataclasses
import os
import re

DEFAULT_DIR = "/usr/share/wordnet"
POS_FILES = {"n": "data.noun", "v": "data.verb", "a": "data.adj", "r": "data.adv"}


@dataclasses.dataclass
class Synset:
    offset: int
    pos: str  # n, v, a, s (satellite adjective), r
    words: list[str]
    pointers: list[tuple[str, int, str, int, int]]  # (symbol, offset, pos, source word no., target word no.)
    definition: str
    examples: list[str]

    @property
    def key(self) -> tuple[str, int]:
        return _file_pos(self.pos), self.offset


def _file_pos(pos: str) -> str:
    return "a" if pos == "s" else pos


def _clean_word(word: str) -> str:
    """`hot`, `ice_cream` -> `ice cream`, adjective markers `(a)`/`(p)`/`(ip)` removed."""
    return re.sub(r"\((a|p|ip)\)$", "", word).replace("_", " ")


def _parse_line(line: str) -> Synset:
    data, _, gloss = line.partition(" | ")
    fields = data.split()
    offset, pos, w_cnt = int(fields[0]), fields[2], int(fields[3], 16)
    words = [_clean_word(fields[4 + 2 * i]) for i in range(w_cnt)]
    i = 4 + 2 * w_cnt
    p_cnt = int(fields[i])
    pointers = []
    for j in range(p_cnt):
        symbol, target, target_pos, src_tgt = fields[i + 1 + 4 * j: i + 5 + 4 * j]
        pointers.append((symbol, int(target), _file_pos(target_pos), int(src_tgt[:2], 16), int(src_tgt[2:], 16)))
    gloss = gloss.strip()
    examples = re.findall(r'"([^"]+)"', gloss)
    definition = gloss.split('; "')[0].split(' "')[0].strip().rstrip(";").strip()
    return Synset(offset, pos, words, pointers, definition, examples)


def read_synsets(directory: str = DEFAULT_DIR) -> dict[tuple[str, int], Synset]:
    """All synsets, keyed by (pos, byte offset) as pointers address them."""
    if not os.path.isfile(os.path.join(directory, "data.noun")):
        raise FileNotFoundError(
            f"WordNet 3.0 database not found in {directory}: install it with `apt-get install wordnet-base`"
        )
    synsets = {}
    for pos, name in POS_FILES.items():
        with open(os.path.join(directory, name), encoding="latin-1") as f:
            for line in f:
                if line.startswith("  "):  # license header
                    continue
                s = _parse_line(line)
                synsets[(pos, s.offset)] = s
    return synsets


def antonym_pairs(synsets: dict[tuple[str, int], Synset]) -> list[tuple[str, str]]:
    """Ordered single-word antonym pairs from the lexical `!` pointers, lower-cased, deduplicated.

    Each pair appears in both directions (WordNet stores both pointers).
    """
    pairs = set()
    for s in synsets.values():
        for symbol, target, pos, src, tgt in s.pointers:
            if symbol != "!" or src == 0 or tgt == 0:
                continue
            a, b = s.words[src - 1].lower(), synsets[(pos, target)].words[tgt - 1].lower()
            if a == b or not (a.replace("-", "").isalpha() and b.replace("-", "").isalpha()):
                continue
            pairs.add((a, b))
            pairs.add((b, a))
    return sorted(pairs)


def _fix_article(text: str) -> str:
    """a/an agreement after a substitution."""
    text = re.sub(r"\b([Aa])n (?=[^aeiouAEIOU\W])", r"\1 ", text)
    return re.sub(r"\b([Aa]) (?=[aeiouAEIOU])", r"\1n ", text)


def synonym_paraphrases(synsets: dict[tuple[str, int], Synset], min_words: int = 4) -> list[tuple[str, str]]:
    """Paraphrase pairs from WordNet's example sentences: the sentence, and the same sentence with its
    synset's word replaced by a single-word synonym from the same synset."""
    pairs = []
    for s in synsets.values():
        singles = [w for w in s.words if " " not in w]
        if len(singles) < 2:
            continue
        for example in s.examples:
            if len(example.split()) < min_words:
                continue
            for word in singles:
                m = re.search(r"\b%s\b" % re.escape(word), example)
                synonyms = [o for o in singles if o.lower() != word.lower()]
                if m is None or not synonyms:
                    continue
                synonym = synonyms[0]
                pairs.append((example, _fix_article(example[:m.start()] + synonym + example[m.end():])))
                break
    return pairs
