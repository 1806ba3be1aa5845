"""Benchmark families for bench/contamination.py, built from the real data in ../shared/data.

Each family is a benchmark (the items a model is evaluated on) and a train split: unrelated
rows, same-topic rows (like the benchmark, not copied from it) and planted rows, each planted
row tied to the benchmark item it came from:

- `verbatim`: the item copied whole;
- `rephrased`: the item reworded with its content kept (GSM8K: lm-sys/llm-decontaminator's LLM
  rephrasings; exam: a rule rephrasing, see `rule_rephrase` and the paraphrase templates);
- `passage` (exam only): a reading passage of the benchmark copied verbatim with a question of
  its own (every item sharing that passage is a right answer);
- `translated`: French translations written by hand (GSM8K: 20 test questions in
  bench/data/contamination_fr.json; exam: the template items rendered from a French version of
  their template, so each is a real translation, not word-by-word).

GSM8K: benchmark = GSM8K test (1,319 questions); train = GSM8K train (7,473: the same-topic
rows), 2,000 MNLI premises (unrelated), and the planted rows.

exam: a multiple-choice exam in three subjects, built like the benchmark of issue 19:
`reading` (long IMDb reviews as passages, 4 cloze questions each: the passage fills the
embedder's 256-token window, so the question is cut off), `nli` (MNLI premises, each with its 3
hypotheses, as yes / cannot tell / no questions) and `arithmetic` (6 templates with names and
numbers drawn at random). Train = GSM8K train (unrelated, as in the issue), same-topic rows
(other long reviews with cloze questions, other MNLI pairs in the same format, items of 3 other
arithmetic templates) and the planted rows.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
HERE = Path(__file__).resolve().parent


@dataclass
class Family:
    name: str
    bench: list[str]  # benchmark items
    train: list[str]  # train rows (shuffled)
    kind: np.ndarray  # per train row: unrelated / same_topic / verbatim / rephrased / ...
    item: np.ndarray  # per train row: the planted benchmark item, -1 for controls
    # per train row: every benchmark item that is a right answer (shared passages), or None
    right: list = field(default_factory=list)
    subject: np.ndarray | None = None  # per benchmark item (exam)
    notes: list[str] = field(default_factory=list)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _shuffle(rng, rows: list[tuple[str, str, int, list | None]], bench, name, **kw) -> Family:
    order = rng.permutation(len(rows))
    rows = [rows[i] for i in order]
    return Family(
        name=name,
        bench=bench,
        train=[r[0] for r in rows],
        kind=np.array([r[1] for r in rows]),
        item=np.array([r[2] for r in rows], np.int64),
        right=[r[3] for r in rows],
        **kw,
    )


def french() -> dict:
    return json.loads((HERE / "data" / "contamination_fr.json").read_text())


# --- GSM8K -------------------------------------------------------------------------------------
def rephrased_question(text: str) -> str:
    """The question of a `Question: ...\\nAnswer: ...` item of test_rephrased.jsonl."""
    q = text.split("\nAnswer:", 1)[0]
    return q.removeprefix("Question:").strip()


def mnli_rows() -> list[dict]:
    path = DATA / "mnli_negation" / "mnli_dev_matched_bert100.tsv"
    with path.open() as f:
        return list(csv.DictReader(f, delimiter="\t"))


def gsm8k_family(seed: int, n_plant: int = 100, n_unrelated: int = 2000) -> Family:
    d = DATA / "gsm8k_contamination"
    train = [r["question"] for r in read_jsonl(d / "train.jsonl")]
    test = [r["question"] for r in read_jsonl(d / "test.jsonl")]
    reph = [rephrased_question(r["text"]) for r in read_jsonl(d / "test_rephrased.jsonl")]
    fr = {int(k): v for k, v in french()["gsm8k"].items()}
    rng = np.random.default_rng(seed)
    free = np.setdiff1d(np.arange(len(test)), list(fr))
    pick = rng.choice(free, 2 * n_plant, replace=False)
    rows = [(t, "same_topic", -1, None) for t in train]
    premises = sorted({r["premise"] for r in mnli_rows() if len(r["premise"].split()) >= 8})
    for i in rng.choice(len(premises), n_unrelated, replace=False):
        rows.append((premises[i], "unrelated", -1, None))
    rows += [(test[i], "verbatim", int(i), None) for i in pick[:n_plant]]
    rows += [(reph[i], "rephrased", int(i), None) for i in pick[n_plant:]]
    rows += [(t, "translated", i, None) for i, t in fr.items()]
    return _shuffle(rng, rows, test, "gsm8k")


# --- exam: rule rephrasing ---------------------------------------------------------------------
# A rule rephrasing that keeps the content: common words swapped for a synonym (both ways), so
# most 13-grams of the item are broken while its meaning stays. Written for this benchmark.
_SYN = dict(
    p.split(":")
    for p in (
        "movie:film film:movie good:fine great:excellent bad:poor terrible:awful awful:dreadful "
        "very:really really:truly big:large large:big small:little little:small many:numerous "
        "people:folks think:believe believe:think show:display shows:displays saw:watched "
        "watch:view watched:saw story:tale plot:storyline actor:performer actors:performers "
        "acting:performances funny:amusing boring:dull beautiful:lovely best:finest worst:poorest "
        "love:adore loved:adored like:enjoy liked:enjoyed hate:detest begin:start start:begin "
        "end:finish ending:conclusion end:close also:too just:simply only:merely quite:rather "
        "almost:nearly often:frequently maybe:perhaps seems:appears seemed:appeared get:obtain "
        "make:create made:created makes:creates need:require help:assist buy:purchase "
        "bought:purchased said:stated says:states tell:inform told:informed job:occupation "
        "work:labor house:home home:house car:automobile child:kid children:kids man:guy "
        "woman:lady women:ladies men:guys old:aged new:recent fast:quick quickly:rapidly "
        "slowly:gradually happy:glad sad:unhappy hard:difficult easy:simple important:significant "
        "problem:issue problems:issues money:cash time:period world:globe city:town "
        "country:nation government:administration rich:wealthy poor:needy small:tiny "
        "enough:sufficient whole:entire each:every every:each begin:commence place:spot "
        "area:region use:employ used:employed give:provide gave:provided find:discover "
        "found:discovered know:realize knew:realized want:wish wanted:wished try:attempt "
        "tried:attempted keep:retain kept:retained look:appear looks:appears different:distinct "
        "same:identical whole:complete real:genuine true:accurate wrong:incorrect "
        "question:query answer:reply answers:replies main:principal large:sizable"
    ).split()
)


def rule_rephrase(text: str) -> str:
    """Swap every word of the synonym table (case kept for a leading capital)."""

    def swap(m: re.Match) -> str:
        w = m.group(0)
        s = _SYN.get(w.lower())
        if s is None:
            return w
        return s.capitalize() if w[0].isupper() else s

    return re.sub(r"[A-Za-z]+", swap, text)


# --- exam: arithmetic templates ----------------------------------------------------------------
NAMES = [
    "Tom", "Anna", "Ravi", "Maria", "Kenji", "Lucy", "Omar", "Sofia", "Liam", "Chen", "Ava",
    "Diego", "Nora", "Ivan", "Zara", "Ben", "Mia", "Yusuf", "Elena", "Sam",
]  # fmt: skip
OBJECTS = [
    ("apples", "pommes"), ("pencils", "crayons"), ("books", "livres"), ("marbles", "billes"),
    ("stickers", "autocollants"), ("cookies", "biscuits"), ("stamps", "timbres"),
    ("cards", "cartes"), ("shells", "coquillages"), ("balloons", "ballons"),
]  # fmt: skip

# (stem, paraphrase keeping the content, French translation, answer)
TEMPLATES = {
    "gift": (
        "{n1} has {a} {obj}. {n2} gives {n1} {b} more {obj}. How many {obj} does {n1} have now?",
        "After {n2} hands over another {b} {obj}, how many {obj} does {n1}, who started with "
        "{a}, own?",
        "{n1} a {a} {fobj}. {n2} donne {b} {fobj} de plus à {n1}. Combien de {fobj} {n1} a-t-il "
        "maintenant ?",
        lambda a, b, c: a + b,
    ),
    "boxes": (
        "A box holds {a} {obj}. {n1} buys {b} boxes. How many {obj} does {n1} buy in total?",
        "{n1} purchases {b} boxes, and every box contains {a} {obj}. What is the total number "
        "of {obj} {n1} gets?",
        "Une boîte contient {a} {fobj}. {n1} achète {b} boîtes. Combien de {fobj} {n1} "
        "achète-t-il en tout ?",
        lambda a, b, c: a * b,
    ),
    "spend": (
        "{n1} had {a} dollars. {n1} spent {b} dollars on {obj} and {c} dollars on lunch. How "
        "many dollars does {n1} have left?",
        "Starting with {a} dollars, {n1} paid {b} dollars for {obj} and then {c} dollars for "
        "lunch. How much money remains?",
        "{n1} avait {a} dollars. {n1} a dépensé {b} dollars en {fobj} et {c} dollars pour le "
        "déjeuner. Combien de dollars reste-t-il à {n1} ?",
        lambda a, b, c: a - b - c,
    ),
    "pages": (
        "{n1} reads {a} pages every day. How many pages does {n1} read in {b} weeks?",
        "If {n1} gets through {a} pages each day, what is the number of pages read over {b} weeks?",
        "{n1} lit {a} pages par jour. Combien de pages {n1} lit-il en {b} semaines ?",
        lambda a, b, c: a * 7 * b,
    ),
    "class": (
        "There are {a} students in a class. {b} of them are boys. How many girls are in the class?",
        "A class has {a} students, and {b} of these students are boys. What is the number of "
        "girls?",
        "Il y a {a} élèves dans une classe. {b} d'entre eux sont des garçons. Combien y a-t-il "
        "de filles dans la classe ?",
        lambda a, b, c: a - b,
    ),
    "train": (
        "A train travels {a} miles per hour for {b} hours. How many miles does the train travel?",
        "Moving at {a} miles per hour, how far does a train go in {b} hours?",
        "Un train roule à {a} miles par heure pendant {b} heures. Combien de miles le train "
        "parcourt-il ?",
        lambda a, b, c: a * b,
    ),
}
HELD_OUT = {  # same topic, other templates: the same-topic controls
    "share": ("{n1} bakes {a} {obj} and shares them equally among {b} friends. How many {obj} "
              "does each friend get?", lambda a, b, c: a // b),
    "area": ("A rectangle is {a} meters long and {b} meters wide. What is its area in square "
             "meters?", lambda a, b, c: a * b),
    "age": ("{n1} is {a} years old. {n2} is {b} years older than {n1}. How old will {n2} be in "
            "{c} years?", lambda a, b, c: a + b + c),
}  # fmt: skip


def _slots(rng) -> dict:
    n1, n2 = rng.choice(NAMES, 2, replace=False)
    obj, fobj = OBJECTS[rng.integers(len(OBJECTS))]
    a = int(rng.integers(20, 90))
    return {
        "n1": n1,
        "n2": n2,
        "obj": obj,
        "fobj": fobj,
        "a": a,
        "b": int(rng.integers(2, 12)),
        "c": int(rng.integers(1, 9)),
    }


def _options(rng, answer: int) -> list[int]:
    wrong = rng.choice([d for d in range(-9, 10) if d], 3, replace=False)
    opts = [answer, *(answer + int(d) for d in wrong)]
    rng.shuffle(opts)
    return opts


def mcq(stem: str, options, letters="ABCD", frame="Question: {stem}\n{opts}", fmt="{l}) {o}"):
    return frame.format(stem=stem, opts=_opts(options, letters, fmt))


# --- exam: reading and NLI ---------------------------------------------------------------------
def imdb_reviews(min_words: int = 190) -> list[str]:
    """One review of each human-edited pair (its partner is a near copy and is never used),
    from train, dev and test, at least `min_words` words, <br /> turned into spaces."""
    out = []
    for part in ("train", "dev", "test"):
        with (DATA / "imdb_counterfactual" / f"{part}_paired.tsv").open() as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        for r in rows[0::2]:
            t = re.sub(r"\s+", " ", r["Text"].replace("<br />", " ")).strip().strip('"')
            if len(t.split()) >= min_words:
                out.append(t)
    return out


def cloze_questions(rng, review: str, k: int, vocab: list[str]) -> list[str]:
    """k cloze questions on k distinct sentences of the review (a word of 5+ letters blanked,
    3 distractors from other reviews' words)."""
    sents = [s for s in re.split(r"(?<=[.!?])\s+", review) if 8 <= len(s.split()) <= 40]
    if len(sents) < k:
        return []
    out = []
    for s in rng.choice(sents, k, replace=False):
        words = s.split()
        cand = [i for i, w in enumerate(words) if re.fullmatch(r"[a-z]{5,}", w)]
        if not cand:
            return []
        i = int(rng.choice(cand))
        answer = words[i]
        blanked = " ".join(words[:i] + ["____"] + words[i + 1 :])
        opts = [answer, *rng.choice([v for v in vocab if v != answer], 3, replace=False)]
        rng.shuffle(opts)
        out.append((blanked, [str(o) for o in opts]))
    return out


READ_FRAME = "Read the passage and answer the question.\nPassage: {passage}\n{question}"
READ_Q = 'Question: Which word fills the blank in "{blank}"?\n{opts}'
NLI_FRAME = (
    "Premise: {p}\nHypothesis: {h}\nDoes the premise entail the hypothesis?\nA) yes\n"
    "B) it is not possible to tell\nC) no"
)
NLI_REPHRASE = (
    "Statement: {p}\nClaim: {h}\nIs the claim implied by the statement?\n(1) yes\n"
    "(2) cannot be determined\n(3) no"
)


def _opts(options, letters="ABCD", fmt="{l}) {o}") -> str:
    return "\n".join(fmt.format(l=letters[i], o=o) for i, o in enumerate(options))


def exam_family(
    seed: int,
    n_passages: int = 45,
    n_premises: int = 60,
    per_template: int = 25,
    n_verbatim: int = 100,
    n_rephrased: int = 100,
    n_passage_rows: int = 40,
    n_translated: int = 60,
) -> Family:
    rng = np.random.default_rng(1000 + seed)
    gsm_train = [r["question"] for r in read_jsonl(DATA / "gsm8k_contamination" / "train.jsonl")]
    reviews = imdb_reviews()
    order = rng.permutation(len(reviews))
    vocab = sorted({w for r in reviews for w in r.split() if re.fullmatch(r"[a-z]{5,}", w)})
    bench: list[str] = []
    subject: list[str] = []
    # per benchmark item, what its rephrasing and translation are made of
    reph: list[str] = []
    trans: list[str | None] = []
    passage_of: list[int] = []  # index of the item's passage (reading), -1 otherwise
    passages: list[str] = []
    # reading: passages with 4 cloze questions each
    used = 0
    pos = 0
    while used < n_passages:
        review = reviews[order[pos]]
        pos += 1
        qs = cloze_questions(rng, review, 4, vocab)
        if not qs:
            continue
        for blank, opts in qs:
            q = READ_Q.format(blank=blank, opts=_opts(opts))
            bench.append(READ_FRAME.format(passage=review, question=q))
            r_q = 'Task: pick the word that completes "{b}".\n{o}'.format(
                b=rule_rephrase(blank), o=_opts(opts, "abcd", "({l}) {o}")
            )
            reph.append(
                "Read the text below and reply.\nText: " + rule_rephrase(review) + "\n" + r_q
            )
            trans.append(None)
            subject.append("reading")
            passage_of.append(used)
        passages.append(review)
        used += 1
    same_topic: list[str] = []
    for j in range(pos, pos + 150):  # other long reviews, same format
        qs = cloze_questions(rng, reviews[order[j % len(order)]], 1, vocab)
        if qs:
            q = READ_Q.format(blank=qs[0][0], opts=_opts(qs[0][1]))
            same_topic.append(READ_FRAME.format(passage=reviews[order[j % len(order)]], question=q))
    # nli: premises with their 3 hypotheses
    by_premise: dict[str, list[str]] = {}
    for r in mnli_rows():
        by_premise.setdefault(r["premise"], []).append(r["hypothesis"].strip())
    prem = sorted(p for p, hs in by_premise.items() if len(hs) == 3 and len(p.split()) >= 8)
    porder = rng.permutation(len(prem))
    for i in porder[:n_premises]:
        p = prem[i]
        for h in by_premise[p]:
            bench.append(NLI_FRAME.format(p=p, h=h))
            reph.append(NLI_REPHRASE.format(p=rule_rephrase(p), h=rule_rephrase(h)))
            trans.append(None)
            subject.append("nli")
            passage_of.append(-1)
    for i in porder[n_premises : n_premises + 100]:  # other premises: 300 same-topic rows
        same_topic += [NLI_FRAME.format(p=prem[i], h=h) for h in by_premise[prem[i]]]
    # arithmetic: 6 templates
    for stem, para, fr, ans in TEMPLATES.values():
        for _ in range(per_template):
            s = _slots(rng)
            opts = _options(rng, ans(s["a"], s["b"], s["c"]))
            bench.append(mcq(stem.format(**s), opts))
            reph.append(
                mcq(para.format(**s), opts, "abcd", "Problem: {stem}\nChoices:\n{opts}", "{l}. {o}")
            )
            trans.append(mcq(fr.format(**s), opts, frame="Question : {stem}\n{opts}"))
            subject.append("arithmetic")
            passage_of.append(-1)
    for stem, ans in HELD_OUT.values():
        for _ in range(50):
            s = _slots(rng)
            same_topic.append(mcq(stem.format(**s), _options(rng, ans(s["a"], s["b"], s["c"]))))

    subject_arr = np.array(subject)
    passage_arr = np.array(passage_of)
    rows = [(t, "unrelated", -1, None) for t in gsm_train]
    rows += [(t, "same_topic", -1, None) for t in same_topic]
    items = rng.permutation(len(bench))
    verb, rest = items[:n_verbatim], items[n_verbatim:]
    rows += [(bench[i], "verbatim", int(i), None) for i in verb]
    rows += [(reph[i], "rephrased", int(i), None) for i in rest[:n_rephrased]]
    tr_items = [i for i in rest[n_rephrased:] if trans[i] is not None][:n_translated]
    rows += [(trans[i], "translated", int(i), None) for i in tr_items]
    # shared passage: a passage verbatim with a question of its own
    for k in rng.choice(len(passages), min(n_passage_rows, len(passages)), replace=False):
        q = "Question: What is the overall opinion of the reviewer?\nA) positive\nB) negative"
        members = np.flatnonzero(passage_arr == k).tolist()
        rows.append((READ_FRAME.format(passage=passages[k], question=q), "passage", -1, members))
    fam = _shuffle(rng, rows, bench, "exam", subject=subject_arr)
    fam.notes.append(
        f"exam: {len(bench)} items ({(subject_arr == 'reading').sum()} reading on "
        f"{len(passages)} passages, {(subject_arr == 'nli').sum()} nli, "
        f"{(subject_arr == 'arithmetic').sum()} arithmetic from {len(TEMPLATES)} templates)"
    )
    return fam
