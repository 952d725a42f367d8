"""`builtin:definitions`: an offline instruction set made from WordNet 3.0 (already fetched for augmentation).

One example per common single word and part of speech: the prompt asks what the word means, the response is the
gloss of its most frequent sense (WordNet orders a lemma's synsets by tagged frequency), with the gloss's first
usage example when it has one. Only lemmas with at least one sense-tagged use in WordNet's corpus are kept (common
words, ~20k examples). Each row carries its synset (`synset`), which the SFT split uses as its group: synonyms that
share a gloss never sit on both sides of the train/test line, so a test response is never a training response.
"""

from __future__ import annotations

from pathlib import Path

from .augment.wordnet import POS, WordNet

POS_NAMES = {"noun": "noun", "verb": "verb", "adj": "adjective", "adv": "adverb"}


def gloss(wn: WordNet, pos: str, offset: int) -> tuple[str, str | None]:
    """(definition, first usage example or None) of a synset: the text after ` | ` in its data line, definitions
    and quoted examples separated by `;`."""
    data = wn._data[pos]
    line = data[offset: data.index(b"\n", offset)].decode("latin-1")
    text = line.split(" | ", 1)[1].strip() if " | " in line else ""
    parts = [p.strip() for p in text.split(";") if p.strip()]
    definition = "; ".join(p for p in parts if not p.startswith('"'))
    examples = [p.strip('"') for p in parts if p.startswith('"')]
    return definition, (examples[0] if examples else None)


def rows(root: Path) -> list[dict]:
    """The data set's rows: prompt, response, word, pos, synset."""
    wn = WordNet(root)
    out = []
    for pos in POS:
        for lemma, (tagged, offsets) in sorted(wn.index[pos].items()):
            if tagged < 1 or not lemma.isalpha() or len(lemma) < 3 or not offsets:
                continue
            definition, example = gloss(wn, pos, offsets[0])
            if not definition:
                continue
            response = definition[0].upper() + definition[1:].rstrip(".") + "."
            if example:
                response += f' For example: "{example}"'
            out.append({"prompt": f'What does the {POS_NAMES[pos]} "{lemma}" mean?', "response": response,
                        "word": lemma, "pos": pos, "synset": f"{pos}:{offsets[0]}"})
    return out
