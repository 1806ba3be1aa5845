"""Counterfactual text: change the spurious attribute and keep the label, or flip the label.

Two modes:
- `attribute`: rewrite a text of group A so that it belongs to group B (e.g. gender, religion,
  negation), keeping its label. Fills a small label x group cell with edited rows of the same
  label from other groups (counterfactual data augmentation).
- `flip`: the minimal edit that changes the label (a contrast set): a positive review made
  negative with as few words changed as possible. The rules turn only the source label's words
  into the target's (one way); attribute edits swap both sides.

Backends:
- `rules` (built in, offline): word-pair substitution from lists whose *sides* name the groups
  (`gender`: male/female; `religion`: christian/muslim/jewish; `age`: young/old; `negation`:
  affirmative/negated; `sentiment`: positive/negative, used to flip sentiment labels). Users add
  lists in YAML/JSON (`{name, sides, pairs, aliases, ambiguous, keep}`) or TSV (a header naming
  the sides, then one tuple of words per line). Substitution swaps the two sides in one pass (a
  flip goes one way), keeps the case of each word, and a text with nothing to substitute yields
  no candidate. A group value matches a side by name or alias, case-insensitively; when no list
  covers a pair of values the rule backend cannot serve it.
- `openai`: an OpenAI-compatible chat endpoint; `transformers`: a local causal LM
  (generators/llm.py). These can serve any attribute named in the prompt.

Every output is verified by the caller (generators/verify.py) before it is kept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..store.config import load_config
from ..store.errors import InputError

# Words after which a pronoun like "her" is an object ("told her that"), not a possessive
# ("told her story"): the next word decides between the two forms of an ambiguous entry.
_NOT_A_NOUN = frozenset(
    "a an the this that these those and or but nor so to of in on at by for with from about "
    "into onto over under up down out off back away again too as than when while if because "
    "before after until since i you he she it we they me him her us them my your his its our "
    "their is are was were be been being am do does did has have had will would can could "
    "shall should may might must not no never always just only also yet still".split()
)


@dataclass
class WordList:
    """Aligned word tuples, one word per side (a side names a group value).

    `ambiguous` maps a word whose replacement depends on what follows to (the form before a
    noun, the form elsewhere): female -> male "her" is "his" in "her book" and "him" in "told
    her that". `keep` lists phrases left as they are although they contain a listed word
    ("as well as" is not praise)."""

    name: str
    sides: list[str]
    entries: list[tuple[str, ...]]
    aliases: dict[str, list[str]] = field(default_factory=dict)
    ambiguous: dict[str, tuple[str, str]] = field(default_factory=dict)
    keep: list[str] = field(default_factory=list)
    _subs: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def side_of(self, value) -> int | None:
        v = str(value).strip().lower()
        for i, side in enumerate(self.sides):
            if v == side.lower() or v in {a.lower() for a in self.aliases.get(side, [])}:
                return i
        return None

    def mapping(self, a: int, b: int, both_ways: bool = True) -> dict[str, str | tuple[str, str]]:
        """Lower-case word -> replacement: side a's words become side b's, and with `both_ways`
        side b's become side a's too (a swap). The first entry wins; an `ambiguous` word whose
        replacement is one of its two forms maps to both (the next word picks one)."""
        out: dict[str, str] = {}
        for e in self.entries:
            out.setdefault(e[a].lower(), e[b])
        if both_ways:
            for e in self.entries:
                out.setdefault(e[b].lower(), e[a])
        out = {k: v for k, v in out.items() if k != v.lower()}
        for word, forms in self.ambiguous.items():
            if out.get(word.lower(), "").lower() in {f.lower() for f in forms}:
                out[word.lower()] = (forms[0], forms[1])
        return out

    def substitution(self, a: int, b: int, both_ways: bool = True) -> Substitution:
        """The compiled substitution from side a to side b, built once per list and direction
        (cached on the list itself, so it lives and dies with it)."""
        key = (a, b, both_ways)
        if key not in self._subs:
            self._subs[key] = Substitution(self.mapping(a, b, both_ways), self.keep)
        return self._subs[key]


BUILTIN_LISTS: dict[str, WordList] = {
    "gender": WordList(
        "gender",
        ["male", "female"],
        [
            ("he", "she"),
            ("his", "her"),
            ("him", "her"),
            ("himself", "herself"),
            ("man", "woman"),
            ("men", "women"),
            ("boy", "girl"),
            ("boys", "girls"),
            ("father", "mother"),
            ("fathers", "mothers"),
            ("son", "daughter"),
            ("sons", "daughters"),
            ("brother", "sister"),
            ("brothers", "sisters"),
            ("husband", "wife"),
            ("husbands", "wives"),
            ("uncle", "aunt"),
            ("nephew", "niece"),
            ("king", "queen"),
            ("prince", "princess"),
            ("mr", "mrs"),
            ("sir", "madam"),
            ("gentleman", "lady"),
            ("gentlemen", "ladies"),
            ("actor", "actress"),
            ("actors", "actresses"),
            ("boyfriend", "girlfriend"),
            ("dad", "mom"),
            ("grandfather", "grandmother"),
            ("male", "female"),
            ("males", "females"),
            ("guy", "woman"),
            ("guys", "women"),
            ("his", "hers"),
        ],
        {
            "male": ["m", "man", "men", "masculine", "boy"],
            "female": ["f", "woman", "women", "feminine", "girl"],
        },
        ambiguous={"her": ("his", "him")},
    ),
    "religion": WordList(
        "religion",
        ["christian", "muslim", "jewish"],
        [
            ("christian", "muslim", "jewish"),
            ("christians", "muslims", "jews"),
            ("christianity", "islam", "judaism"),
            ("church", "mosque", "synagogue"),
            ("churches", "mosques", "synagogues"),
            ("bible", "quran", "torah"),
            ("priest", "imam", "rabbi"),
            ("priests", "imams", "rabbis"),
        ],
        {
            "christian": ["christianity"],
            "muslim": ["islam", "islamic"],
            "jewish": ["jew", "judaism"],
        },
    ),
    "age": WordList(
        "age",
        ["young", "old"],
        [
            ("young", "old"),
            ("younger", "older"),
            ("youngest", "oldest"),
            ("youth", "elderly"),
            ("teenager", "pensioner"),
            ("teenagers", "pensioners"),
            ("kid", "senior"),
            ("kids", "seniors"),
        ],
        {"young": ["youth", "junior"], "old": ["elderly", "senior", "older"]},
    ),
    "negation": WordList(
        "negation",
        ["affirmative", "negated"],
        [
            ("is", "is not"),
            ("are", "are not"),
            ("was", "was not"),
            ("were", "were not"),
            ("does", "does not"),
            ("do", "do not"),
            ("did", "did not"),
            ("can", "cannot"),
            ("will", "will not"),
            ("could", "could not"),
            ("would", "would not"),
            ("should", "should not"),
            ("has", "has not"),
            ("have", "have not"),
            ("is", "isn't"),
            ("are", "aren't"),
            ("was", "wasn't"),
            ("were", "weren't"),
            ("does", "doesn't"),
            ("do", "don't"),
            ("did", "didn't"),
            ("can", "can't"),
            ("will", "won't"),
            ("always", "never"),
            ("everybody", "nobody"),
            ("something", "nothing"),
            ("someone", "no one"),
        ],
        {
            "affirmative": ["false", "no", "not_negated", "without_negation"],
            "negated": ["true", "yes", "negation", "has_negation", "with_negation"],
        },
    ),
    "sentiment": WordList(
        "sentiment",
        ["positive", "negative"],
        [
            ("good", "bad"),
            ("great", "terrible"),
            ("best", "worst"),
            ("better", "worse"),
            ("excellent", "awful"),
            ("wonderful", "horrible"),
            ("amazing", "dreadful"),
            ("brilliant", "dull"),
            ("love", "hate"),
            ("loved", "hated"),
            ("loves", "hates"),
            ("like", "dislike"),
            ("liked", "disliked"),
            ("beautiful", "ugly"),
            ("fun", "boring"),
            ("funny", "unfunny"),
            ("interesting", "uninteresting"),
            ("masterpiece", "disaster"),
            ("perfect", "flawed"),
            ("superb", "abysmal"),
            ("fantastic", "awful"),
            ("well", "poorly"),
            ("strong", "weak"),
            ("success", "failure"),
            ("underrated", "overrated"),
            ("entertaining", "tedious"),
            ("enjoyable", "unbearable"),
            ("memorable", "forgettable"),
            ("impressive", "unimpressive"),
            ("recommend", "avoid"),
            ("highly", "barely"),
            ("incredible", "implausible"),
            ("nice", "nasty"),
            ("enjoyed", "hated"),
            ("favorite", "least favorite"),
            ("gem", "mess"),
            ("outstanding", "mediocre"),
            ("touching", "cloying"),
            ("powerful", "feeble"),
            ("clever", "stupid"),
            ("smart", "dumb"),
            ("worth", "not worth"),
            ("must-see", "must-miss"),
            ("pleasure", "chore"),
            ("best", "poorest"),
            ("positive", "negative"),
        ],
        {"positive": ["pos", "+", "good", "p"], "negative": ["neg", "-", "bad", "n"]},
        keep=["as well as", "as well", "might as well"],
    ),
}


def load_word_list(path: str | Path) -> WordList:
    """A user word-pair list: YAML/JSON `{name, sides, pairs, aliases}` or TSV (header of sides)."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"word list {p} does not exist", "check the path in word_lists")
    text = p.read_text(encoding="utf-8")
    if p.suffix.lower() in (".tsv", ".txt", ".csv"):
        sep = "," if p.suffix.lower() == ".csv" else "\t"
        rows = [
            [c.strip() for c in ln.split(sep)]
            for ln in text.splitlines()
            if ln.strip() and not ln.startswith("#")
        ]
        if len(rows) < 2:
            raise InputError(f"word list {p} needs a header of sides and at least one row", "")
        sides, entries = rows[0], [tuple(r) for r in rows[1:]]
        data = {"name": p.stem, "sides": sides, "pairs": entries}
    else:
        data = load_config(p, "word list")
    sides = [str(s) for s in data.get("sides", [])]
    entries = [tuple(str(w) for w in e) for e in data.get("pairs", data.get("entries", []))]
    if len(sides) < 2 or not entries or any(len(e) != len(sides) for e in entries):
        raise InputError(
            f"word list {p}: need `sides` (two or more) and `pairs` with one word per side",
            'e.g. {"sides": ["male", "female"], "pairs": [["he", "she"], ["his", "her"]]}',
        )
    aliases = {str(k): [str(a) for a in v] for k, v in (data.get("aliases") or {}).items()}
    ambiguous = {str(k): (str(v[0]), str(v[1])) for k, v in (data.get("ambiguous") or {}).items()}
    keep = [str(k) for k in data.get("keep") or []]
    return WordList(str(data.get("name", p.stem)), sides, entries, aliases, ambiguous, keep)


def _match_case(word: str, repl: str) -> str:
    if word.isupper() and len(word) > 1:
        return repl.upper()
    if word[:1].isupper():
        return repl[:1].upper() + repl[1:]
    return repl


class Substitution:
    """One-pass, case-keeping, whole-word substitution from a mapping; `keep` phrases match
    first and stay as they are. A mapping value (noun form, other form) picks by the next word."""

    def __init__(self, mapping: dict[str, str | tuple[str, str]], keep: list[str] = ()):
        self.mapping = mapping
        self.keep = {k.lower() for k in keep}
        keys = sorted(set(mapping) | self.keep, key=len, reverse=True)  # "is not" before "is"
        body = "|".join(re.escape(k).replace(r"\ ", r"\s+") for k in keys)
        self.pattern = re.compile(
            rf"(?<![\w'-])(?:{body})(?![\w'-])(?=(\s+[\w'-]+)?)", re.IGNORECASE
        )

    def apply(self, text: str) -> tuple[str, list[str]]:
        changes: list[str] = []

        def repl(m: re.Match) -> str:
            word = m.group(0)
            key = re.sub(r"\s+", " ", word.lower())
            if key in self.keep:
                return word
            new = self.mapping[key]
            if isinstance(new, tuple):
                nxt = (m.group(1) or "").strip().lower()
                new = new[0] if nxt and nxt not in _NOT_A_NOUN else new[1]
            changes.append(f"{word}->{new}")
            return _match_case(word, new)

        return self.pattern.sub(repl, text), changes


def find_list(lists: list[WordList], source, target) -> tuple[WordList, int, int] | None:
    """A list with sides matching both values."""
    for wl in lists:
        a, b = wl.side_of(source), wl.side_of(target)
        if a is not None and b is not None and a != b:
            return wl, a, b
    return None


SYSTEM = "You edit texts for a machine-learning dataset. Reply with the edited text only."

ATTRIBUTE_PROMPT = (
    'Rewrite the text below so that its {attribute} is "{target}" instead of "{source}". '
    'Keep everything else the same, including its label "{label}", and change as few words '
    "as possible.\n\nText: {text}"
)
FLIP_PROMPT = (
    'Make the smallest edit to the text below so that its label becomes "{target_label}" '
    'instead of "{label}". Change as few words as possible and keep it fluent.\n\nText: {text}'
)


@dataclass
class TextRequest:
    """One counterfactual to make from a parent text."""

    parent_row_id: int | None
    text: str
    label: str
    target_label: str
    source_value: str | None = None
    target_value: str | None = None
    mode: str = "attribute"  # or "flip"
    seed: int = 0


@dataclass
class TextCandidate:
    request: TextRequest
    text: str | None  # None: the backend could not make one
    prompt: str  # the prompt sent, or the substitutions made


class TextGenerator:
    """Counterfactual text from one backend: `rules` (default), `openai` or `transformers`."""

    def __init__(
        self,
        backend: str = "rules",
        word_lists: list[str | Path | WordList] | None = None,
        llm_url: str | None = None,
        llm_model: str | None = None,
        llm_key_env: str = "OPENAI_API_KEY",
        local_model: str | None = None,
        attribute: str = "attribute",
        device: str | None = None,
    ):
        self.backend = backend
        self.attribute = attribute
        user = [w if isinstance(w, WordList) else load_word_list(w) for w in (word_lists or [])]
        self.lists = user + list(BUILTIN_LISTS.values())  # user lists first: they win
        self.chat = None
        if backend == "openai":
            from .llm import OpenAIChat

            self.chat = OpenAIChat(llm_url, llm_model, llm_key_env)
        elif backend == "transformers":
            from .llm import LocalCausalLM

            self.chat = LocalCausalLM(local_model, device=device)
        elif backend != "rules":
            raise InputError(
                f"unknown text backend {backend!r}", "use rules, openai or transformers"
            )

    @classmethod
    def from_policy(cls, policy, attribute: str = "attribute") -> TextGenerator:
        if policy.llm_url:
            backend = "openai"
        elif policy.local_model:
            backend = "transformers"
        else:
            backend = "rules"
        return cls(
            backend,
            policy.word_lists,
            policy.llm_url,
            policy.llm_model,
            policy.llm_key_env,
            policy.local_model,
            attribute=attribute,
            device=policy.device,
        )

    @property
    def model(self) -> str:
        if self.chat is not None:
            return str(self.chat.model)
        return "word-lists:" + ",".join(w.name for w in self.lists)

    def can_serve(self, source, target, mode: str = "attribute") -> bool:
        if self.chat is not None:
            return True
        return find_list(self.lists, source, target) is not None

    def generate(self, requests: list[TextRequest]) -> list[TextCandidate]:
        if self.chat is None:
            return [self._rule(r) for r in requests]
        msgs = [self._messages(r) for r in requests]
        replies = self.chat.complete_many(
            msgs, [r.seed for r in requests], max_tokens=_max_tokens(requests)
        )
        from .llm import clean_reply

        out = []
        for r, m, reply in zip(requests, msgs, replies):
            text = clean_reply(reply)
            out.append(TextCandidate(r, text or None, m[-1]["content"]))
        return out

    def _messages(self, r: TextRequest) -> list[dict]:
        if r.mode == "flip":
            user = FLIP_PROMPT.format(label=r.label, target_label=r.target_label, text=r.text)
        else:
            user = ATTRIBUTE_PROMPT.format(
                attribute=self.attribute,
                source=r.source_value,
                target=r.target_value,
                label=r.label,
                text=r.text,
            )
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]

    def _rule(self, r: TextRequest) -> TextCandidate:
        src, dst = (
            (r.label, r.target_label) if r.mode == "flip" else (r.source_value, r.target_value)
        )
        found = find_list(self.lists, src, dst)
        if found is None:
            return TextCandidate(r, None, f"no word list maps {src!r} to {dst!r}")
        wl, a, b = found
        # attribute edits swap both sides ("he told her" -> "she told him"); a label flip only
        # turns the source label's words into the target's: swapping a negative review's few
        # positive words too pulled it back (fewer IMDb dev reviews flipped)
        new, changes = wl.substitution(a, b, both_ways=r.mode != "flip").apply(r.text)
        if not changes or new == r.text:
            return TextCandidate(r, None, f"{wl.name}: nothing to substitute")
        return TextCandidate(r, new, f"{wl.name}: " + ", ".join(changes[:20]))


def _max_tokens(requests: list[TextRequest]) -> int:
    longest = max((len(r.text) for r in requests), default=0)
    return int(min(2048, max(64, longest // 3 + 64)))  # ~4 chars a token, with headroom


def counterfactuals(
    texts: list[str],
    labels: list,
    target_labels: list | None = None,
    mode: str = "flip",
    source_values: list | None = None,
    target_values: list | None = None,
    generator: TextGenerator | None = None,
    seed: int = 0,
) -> list[TextCandidate]:
    """Library entry point: one candidate per text (text None where the backend had none)."""
    gen = generator or TextGenerator()
    n = len(texts)
    reqs = [
        TextRequest(
            None,
            str(texts[i]),
            str(labels[i]),
            str(target_labels[i]) if target_labels is not None else str(labels[i]),
            None if source_values is None else str(source_values[i]),
            None if target_values is None else str(target_values[i]),
            mode,
            seed + i,
        )
        for i in range(n)
    ]
    return gen.generate(reqs)
