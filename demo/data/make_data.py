"""Build the demo data set bundled with datacure (seeded; run once, output committed).

    .venv/bin/python demo/data/make_data.py

Writes `news.csv` (columns `text`, `label`, `source`, `split`) and `truth.json` (what was planted)
beside this file. Short news-like sentences in four topics, composed from per-topic phrase lists
so that topics are learnable from the words alone, with these defects planted in `train`:

- label errors: 5% of the original train rows carry a wrong label (`truth.label_errors`);
- exact duplicates: rows copied with a change of case, spacing or punctuation only;
- near duplicates: rows copied with one small word-level change;
- leakage: test rows copied into train;
- a spurious attribute: `source` names the outlet, tied to the topic for 90% of train rows
  (each topic has its own outlet) but independent of it in test, so a model can learn the
  outlet instead of the topic, and the 10% of train rows in the other cells are its minority
  groups.

Sentences are chosen so that any two originals differ in at least two of their four phrases,
so the only duplicates are the planted ones. Tests check that this script reproduces the
committed files byte for byte.
"""

from __future__ import annotations

import csv
import io
import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 20240601
N_TRAIN, N_TEST = 1000, 300
FLIP_SHARE = 0.05
N_EXACT, N_NEAR, N_LEAK = 15, 15, 10
SPURIOUS_CORRELATION = 0.9

TOPICS = {
    "sports": {
        "who": [
            "The home team",
            "The visiting side",
            "Their star striker",
            "The young goalkeeper",
            "The veteran coach",
            "The rookie pitcher",
            "The national squad",
            "The club captain",
            "The title favourites",
            "The relay team",
            "The league leaders",
            "The tennis champion",
        ],
        "did": [
            "won the cup final",
            "lost on penalties",
            "scored twice in the second half",
            "set a new track record",
            "came back from two goals down",
            "was sent off for a foul",
            "signed a three-year contract",
            "clinched the championship",
            "drew level in stoppage time",
            "retired after fifteen seasons",
            "beat the defending champions",
            "missed the decisive free kick",
        ],
        "when": [
            "in front of a sold-out stadium",
            "after a tense overtime",
            "on a rainy Saturday",
            "in the semi-final",
            "during the away match",
            "at the season opener",
            "in the derby",
            "before the transfer deadline",
            "at the Olympic trials",
            "in the play-off round",
            "on home turf",
            "at the world championship",
        ],
        "then": [
            "Fans celebrated late into the night.",
            "The manager praised the defence.",
            "The referee's call was disputed.",
            "Tickets for the rematch sold out.",
            "The coach rested key players.",
            "Supporters sang throughout the match.",
            "The team now tops the table.",
            "Injuries hit the squad again.",
            "The goal was replayed on every channel.",
            "The locker room was jubilant.",
            "Scouts watched from the stands.",
            "The trophy parade is on Monday.",
        ],
    },
    "business": {
        "who": [
            "The central bank",
            "A regional lender",
            "The carmaker",
            "Shareholders of the airline",
            "The retail chain",
            "A mining company",
            "The insurance group",
            "Oil producers",
            "The software vendor",
            "Small exporters",
            "The steel maker",
            "A pension fund",
        ],
        "did": [
            "raised interest rates",
            "reported record quarterly profits",
            "announced a merger with a rival",
            "cut its revenue forecast",
            "laid off two thousand workers",
            "issued new corporate bonds",
            "missed earnings expectations",
            "bought back its own shares",
            "raised prices for customers",
            "filed for bankruptcy protection",
            "paid a special dividend",
            "opened a new factory",
        ],
        "when": [
            "as inflation stayed high",
            "after the stock market closed",
            "amid weak consumer demand",
            "ahead of the annual meeting",
            "as the currency slipped",
            "despite rising costs",
            "in the third quarter",
            "after months of talks",
            "as bond yields climbed",
            "before the trading halt",
            "amid a supply shortage",
            "as investors grew cautious",
        ],
        "then": [
            "Analysts expect further cuts.",
            "The shares fell four percent.",
            "Markets reacted calmly.",
            "The deal still needs regulatory approval.",
            "Profits are forecast to recover next year.",
            "Traders sold the currency.",
            "The board approved the plan.",
            "Unions criticised the decision.",
            "Credit ratings were left unchanged.",
            "Investors welcomed the news.",
            "The company will update guidance in May.",
            "Economists were surprised.",
        ],
    },
    "science": {
        "who": [
            "Astronomers",
            "A team of biologists",
            "Physicists at the laboratory",
            "Climate researchers",
            "Chemists",
            "The space agency",
            "Geologists",
            "Neuroscientists",
            "Marine biologists",
            "Engineers at the university",
            "A group of ecologists",
            "Computer scientists",
        ],
        "did": [
            "discovered a distant exoplanet",
            "sequenced the genome of a rare frog",
            "measured a tiny particle decay",
            "launched a new weather satellite",
            "built a faster quantum processor",
            "found fossils of an unknown dinosaur",
            "mapped neurons in the fruit fly brain",
            "recorded the deepest ocean temperature",
            "synthesised a new superconducting material",
            "detected gravitational waves",
            "tracked the melting of glaciers",
            "trained a model to fold proteins",
        ],
        "when": [
            "using a powerful telescope",
            "in a peer-reviewed study",
            "after years of observation",
            "with a particle accelerator",
            "in samples from the Arctic",
            "with data from orbit",
            "in a lab experiment",
            "using electron microscopes",
            "during a research cruise",
            "with a new sensor array",
            "in a field survey",
            "using supercomputer simulations",
        ],
        "then": [
            "The results appear in a leading journal.",
            "Further experiments are planned.",
            "The finding challenges an old theory.",
            "Other labs will try to replicate it.",
            "The data are freely available.",
            "The method could speed up research.",
            "Funding for the project was renewed.",
            "The team published their code.",
            "Peer reviewers called the work careful.",
            "The instrument worked as designed.",
            "Students helped collect the samples.",
            "The discovery surprised the authors.",
        ],
    },
    "world": {
        "who": [
            "The prime minister",
            "Opposition leaders",
            "Foreign ministers",
            "The United Nations envoy",
            "Protesters in the capital",
            "The new president",
            "Election observers",
            "Border officials",
            "The parliament",
            "Aid agencies",
            "Peace negotiators",
            "The royal family",
        ],
        "did": [
            "called for an early election",
            "signed a ceasefire agreement",
            "imposed new sanctions",
            "visited the flood-hit region",
            "rejected the proposed treaty",
            "announced a cabinet reshuffle",
            "closed the border crossing",
            "held emergency talks",
            "demanded the release of prisoners",
            "approved a new constitution",
            "pledged humanitarian aid",
            "expelled two diplomats",
        ],
        "when": [
            "after a disputed vote",
            "amid mass demonstrations",
            "during a state visit",
            "at the regional summit",
            "following a border clash",
            "after weeks of unrest",
            "ahead of the holiday",
            "at a press conference",
            "in a televised address",
            "as refugees crossed the river",
            "after the coup attempt",
            "at the security council",
        ],
        "then": [
            "Talks will resume next week.",
            "Neighbouring states urged calm.",
            "The embassy issued a travel warning.",
            "Thousands gathered in the square.",
            "Curfews remain in place.",
            "The vote is expected next month.",
            "International observers were invited.",
            "The decision drew wide criticism.",
            "Relief convoys reached the area.",
            "The ambassador was recalled.",
            "Troops were withdrawn from the border.",
            "State media called it a victory.",
        ],
    },
}
LABELS = sorted(TOPICS)
SOURCES = {
    "business": "ledger",
    "science": "lab-notes",
    "sports": "stadium-wire",
    "world": "global-desk",
}
NEAR_EDITS = [
    (" the ", " a "),
    (".", " today."),
    (" a ", " the "),
    (" after ", " following "),
    (" in ", " at "),
]


def _sentences(rng: random.Random, topic: str, n: int) -> list[str]:
    """`n` sentences of one topic, any two differing in at least two of four phrases."""
    parts = TOPICS[topic]
    slots = ("who", "did", "when", "then")
    chosen: list[tuple[int, ...]] = []
    tries = 0
    while len(chosen) < n:
        tries += 1
        if tries > 200_000:
            raise RuntimeError(f"cannot draw {n} distinct {topic} sentences")
        c = tuple(rng.randrange(len(parts[s])) for s in slots)
        if all(sum(a != b for a, b in zip(c, o)) >= 2 for o in chosen):
            chosen.append(c)
    return [
        f"{parts['who'][a]} {parts['did'][b]} {parts['when'][c]}. {parts['then'][d]}"
        for a, b, c, d in chosen
    ]


def _exact_variant(rng: random.Random, text: str) -> str:
    kind = rng.randrange(3)
    if kind == 0:
        return text.upper()
    if kind == 1:
        return "  " + text.replace(" ", "  ", 2) + " "
    return text.replace(".", "!").lower()


def _near_variant(rng: random.Random, text: str) -> str:
    for old, new in rng.sample(NEAR_EDITS, len(NEAR_EDITS)):
        if old in text:
            return text.replace(old, new, 1)
    return text + " Reports say."


def build(seed: int = SEED) -> tuple[str, dict]:
    """(CSV text, truth dict); deterministic for a seed."""
    rng = random.Random(seed)
    per = (N_TRAIN + N_TEST) // len(LABELS) + 1
    pool = []
    for topic in LABELS:
        pool += [(t, topic) for t in _sentences(rng, topic, per)]
    rng.shuffle(pool)
    test, train = pool[:N_TEST], pool[N_TEST : N_TEST + N_TRAIN - N_EXACT - N_NEAR - N_LEAK]
    others = list(SOURCES.values())

    def source(topic: str, correlated: bool) -> str:
        if not correlated:
            return rng.choice(others)
        aligned = SOURCES[topic]
        if rng.random() < SPURIOUS_CORRELATION:
            return aligned
        return rng.choice([s for s in others if s != aligned])

    rows = [{"text": t, "label": y, "source": source(y, True), "split": "train"} for t, y in train]
    test_rows = [
        {"text": t, "label": y, "source": source(y, False), "split": "test"} for t, y in test
    ]
    # planted copies: drawn from rows that keep their true label
    idx = rng.sample(range(len(rows)), N_EXACT + N_NEAR)
    exact, near = [], []
    for j, i in enumerate(idx):
        orig = rows[i]
        if j < N_EXACT:
            copy = dict(orig, text=_exact_variant(rng, orig["text"]))
            exact.append([orig["text"], copy["text"]])
        else:
            copy = dict(orig, text=_near_variant(rng, orig["text"]))
            near.append([orig["text"], copy["text"]])
        rows.append(copy)
    leaked = rng.sample(range(len(test_rows)), N_LEAK)
    for i in leaked:
        rows.append(dict(test_rows[i], split="train", source=source(test_rows[i]["label"], True)))
    # label errors: among originals not involved in any copy
    involved = {rows[i]["text"] for i in idx}
    candidates = [i for i, r in enumerate(rows[: len(train)]) if r["text"] not in involved]
    flips = []
    for i in rng.sample(candidates, round(FLIP_SHARE * len(train))):
        true = rows[i]["label"]
        rows[i]["label"] = rng.choice([c for c in LABELS if c != true])
        flips.append({"text": rows[i]["text"], "given": rows[i]["label"], "true": true})
    rng.shuffle(rows)
    allrows = rows + test_rows
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["text", "label", "source", "split"], lineterminator="\n")
    w.writeheader()
    w.writerows(allrows)
    truth = {
        "seed": seed,
        "rows": {"train": len(rows), "test": len(test_rows)},
        "label_errors": sorted(flips, key=lambda f: f["text"]),
        "exact_duplicates": exact,
        "near_duplicates": near,
        "leaked": [test_rows[i]["text"] for i in leaked],
        "spurious": {
            "column": "source",
            "aligned": SOURCES,
            "train_correlation": SPURIOUS_CORRELATION,
            "test_correlation": 0.25,
        },
    }
    return buf.getvalue(), truth


def main() -> None:
    text, truth = build()
    (HERE / "news.csv").write_text(text, encoding="utf-8")
    (HERE / "truth.json").write_text(json.dumps(truth, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {HERE / 'news.csv'} ({len(text):,} bytes) and truth.json")


if __name__ == "__main__":
    main()
