"""Deterministic synthetic texts for benchmarks: English-like words, chosen lengths.

>>> len(make_texts(3, 10, 20, seed=0))
3
"""

from __future__ import annotations

import random

# Common English words: tokenizers split them like real prose (about 1.3 tokens a word).
_VOCABULARY = """
the of and to in is was for on that with as by at from his her an were which this be are
or had it not but have their has its they one been new more first other after all two
also who into time city year state some most would when there people many these between
during under river county school world during system water music only used part may
where later over such then through known since three including war because game national
called began found before history several team both early high while government film
life family well area season being each second long name back made became series
released played four work same number company around against million station north south
west east small large public group album book following until village population
building university general english side united century another
"""
_WORDS = _VOCABULARY.split()


def make_texts(count: int, min_words: int, max_words: int, seed: int = 0) -> list[str]:
    """``count`` texts of ``min_words``..``max_words`` random common words each."""
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        words = rng.choices(_WORDS, k=rng.randint(min_words, max_words))
        words[0] = words[0].capitalize()
        texts.append(" ".join(words) + ".")
    return texts
