"""Synonyms from WordNet 3.0, read straight from its database files (Debian `wordnet-base`).

Why by hand: the files are plain text (wndb(5WN)) and we need two lookups — a word's synsets, in sense-frequency
order, and a synset's words. NLTK's reader needs a `lexnames` file that the Debian package does not ship, and
pulls in a large dependency for these few lines.

index.<pos>: `lemma pos synset_cnt p_cnt [ptr...] sense_cnt tagsense_cnt offset...` (offsets by frequency)
data.<pos>:  `offset lex_filenum ss_type w_cnt(hex) word lex_id [word lex_id ...] p_cnt ...`
<pos>.exc:   `inflected base ...` (irregular forms); regular inflections follow WordNet's morphy suffix rules.
"""

from __future__ import annotations

from pathlib import Path

POS = ("noun", "verb", "adj", "adv")
# WordNet's morphy detachment rules: (suffix, replacement) per part of speech.
SUFFIXES = {
    "noun": [("s", ""), ("ses", "s"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"), ("men", "man"),
             ("ies", "y")],
    "verb": [("s", ""), ("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""), ("ing", "e"), ("ing", "")],
    "adj": [("er", ""), ("est", ""), ("er", "e"), ("est", "e")],
    "adv": [],
}


class WordNet:
    def __init__(self, root: Path):
        self.root = Path(root)
        missing = [f"index.{p}" for p in POS if not (self.root / f"index.{p}").is_file()]
        if missing:
            from ...errors import AssetError

            raise AssetError(f"WordNet files {missing} are missing in {self.root}; run `trainopt data fetch "
                             "--only wordnet`")
        self.index: dict[str, dict[str, tuple[int, list[int]]]] = {}  # pos -> lemma -> (tagged senses, offsets)
        for pos in POS:
            entries = {}
            for line in (self.root / f"index.{pos}").read_text(encoding="latin-1").splitlines():
                if not line.strip() or line.startswith(" "):
                    continue  # licence header
                f = line.split()
                n_synsets, n_ptrs = int(f[2]), int(f[3])
                tagged = int(f[5 + n_ptrs])
                entries[f[0]] = (tagged, [int(x) for x in f[6 + n_ptrs: 6 + n_ptrs + n_synsets]])
            self.index[pos] = entries
        self.exceptions: dict[str, dict[str, str]] = {}
        for pos in POS:
            exc = self.root / f"{pos}.exc"
            table = {}
            if exc.is_file():
                for line in exc.read_text(encoding="latin-1").splitlines():
                    f = line.split()
                    if len(f) >= 2:
                        table.setdefault(f[0], f[1])
            self.exceptions[pos] = table
        self._data = {pos: (self.root / f"data.{pos}").read_bytes() for pos in POS}
        self._synsets: dict[tuple[str, int], tuple[str, ...]] = {}

    def base_forms(self, word: str, pos: str) -> list[str]:
        """Lemmas of `word` in `pos` that WordNet knows (the word itself first)."""
        w = word.lower()
        out = [w] if w in self.index[pos] else []
        if w in self.exceptions[pos] and self.exceptions[pos][w] in self.index[pos]:
            out.append(self.exceptions[pos][w])
        for suffix, repl in SUFFIXES[pos]:
            if w.endswith(suffix) and len(w) > len(suffix) + 1:
                base = w[: -len(suffix)] + repl
                if base in self.index[pos] and base not in out:
                    out.append(base)
        return out

    def _synset_words(self, pos: str, offset: int) -> tuple[str, ...]:
        key = (pos, offset)
        if key not in self._synsets:
            self._synsets[key] = self._read_synset(pos, offset)
        return self._synsets[key]

    def _read_synset(self, pos: str, offset: int) -> tuple[str, ...]:
        data = self._data[pos]
        end = data.index(b"\n", offset)
        f = data[offset:end].decode("latin-1").split()
        n = int(f[3], 16)
        words = []
        for i in range(n):
            word = f[4 + 2 * i]
            if pos == "adj" and word.endswith(")"):  # adjective markers like (a), (p), (ip)
                word = word[: word.rindex("(")]
            words.append(word.replace("_", " "))
        return tuple(words)

    def best_pos(self, word: str) -> str | None:
        """The part of speech with the most sense-tagged uses of the word: a cheap stand-in for a tagger."""
        best, best_count = None, -1
        for pos in POS:
            for lemma in self.base_forms(word, pos)[:1]:
                tagged = self.index[pos][lemma][0]
                if tagged > best_count:
                    best, best_count = pos, tagged
        return best

    def synonyms(self, word: str, pos: str | None = None, max_senses: int = 3) -> list[str]:
        """Synonyms from the word's most frequent senses, in that order, without the word itself."""
        pos = pos or self.best_pos(word)
        if pos is None:
            return []
        lemmas = self.base_forms(word, pos)
        if not lemmas:
            return []
        seen, out = {word.lower(), *lemmas}, []
        for offset in self.index[pos][lemmas[0]][1][:max_senses]:
            for syn in self._synset_words(pos, offset):
                if syn.lower() not in seen:
                    seen.add(syn.lower())
                    out.append(syn)
        return out
