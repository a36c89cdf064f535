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
    lex_filenum: int = -1  # the lexicographer file (lexnames(5)): a noun's supersense

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
    return Synset(offset, pos, words, pointers, definition, examples, int(fields[1]))


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
    return sorted(antonym_pairs_with_pos(synsets))


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


# lexnames(5): lexicographer file number -> noun supersense (the `lexnames` file is not in wordnet-base)
NOUN_SUPERSENSES = {3: "Tops", 4: "act", 5: "animal", 6: "artifact", 7: "attribute", 8: "body", 9: "cognition",
                    10: "communication", 11: "event", 12: "feeling", 13: "food", 14: "group", 15: "location",
                    16: "motive", 17: "object", 18: "person", 19: "phenomenon", 20: "plant", 21: "possession",
                    22: "process", 23: "quantity", 24: "relation", 25: "shape", 26: "state", 27: "substance",
                    28: "time"}


def first_noun_senses(synsets: dict[tuple[str, int], Synset], directory: str = DEFAULT_DIR
                      ) -> list[tuple[str, str, int]]:
    """(noun, supersense of its most frequent sense, tagged-sense count) for single-word nouns.

    index.noun lists a lemma's synsets most frequent first; the tagged-sense count says how often
    the lemma's senses occur in WordNet's semantically tagged corpora (0: never)."""
    out = []
    with open(os.path.join(directory, "index.noun"), encoding="latin-1") as f:
        for line in f:
            if line.startswith("  "):
                continue
            fields = line.split()
            lemma, n_synsets, n_pointers = fields[0], int(fields[2]), int(fields[3])
            tagged = int(fields[5 + n_pointers])
            first = int(fields[6 + n_pointers])
            if not lemma.isalpha() or n_synsets < 1:
                continue
            out.append((lemma, NOUN_SUPERSENSES.get(synsets[("n", first)].lex_filenum, ""), tagged))
    return out


def antonym_pairs_with_pos(synsets: dict[tuple[str, int], Synset]) -> dict[tuple[str, str], str]:
    """`antonym_pairs`' pairs with the part of speech of the pointing synset (n, v, a, r)."""
    out = {}
    for s in synsets.values():
        for symbol, target, pos, src, tgt in s.pointers:
            if symbol != "!" or src == 0 or tgt == 0:
                continue
            a, b = s.words[src - 1].lower(), synsets[(pos, target)].words[tgt - 1].lower()
            if a == b or not (a.replace("-", "").isalpha() and b.replace("-", "").isalpha()):
                continue
            out.setdefault((a, b), _file_pos(s.pos))
            out.setdefault((b, a), _file_pos(s.pos))
    return out
