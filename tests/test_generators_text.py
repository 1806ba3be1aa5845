"""Text generation: rule-based counterfactuals, the OpenAI-compatible path against a real local
HTTP server, a local transformers LM, verification, and provenance through export and ingest."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import polars as pl
import pytest
from helpers import make_store

from datacure.generators.llm import OpenAIChat, chat_url, clean_reply
from datacure.generators.text import TextGenerator, counterfactuals, load_word_list
from datacure.generators.verify import Verifier, verify_candidates
from datacure.repair.export import export
from datacure.repair.plan import plan_repairs
from datacure.repair.policy import RepairPolicy


class BowEmbedder:
    """A bag-of-words embedder (hashing, L2-normalised): stands in for MiniLM in fast tests."""

    def __init__(self, d: int = 512):
        from sklearn.feature_extraction.text import HashingVectorizer

        self.v = HashingVectorizer(
            n_features=d, alternate_sign=False, norm="l2", token_pattern=r"(?u)\b\w+\b"
        )

    def encode(self, items):
        return self.v.transform([str(t) for t in items]).toarray().astype(np.float32)


POS = ["a good film", "a great story", "the best acting", "an excellent cast", "a wonderful plot"]
NEG = ["a bad film", "a terrible story", "the worst acting", "an awful cast", "a horrible plot"]


TOPICS = [
    "the city",
    "the war",
    "the sea",
    "a family",
    "a robbery",
    "the school",
    "a dog",
    "the election",
    "a wedding",
    "the mountains",
    "a heist",
    "the future",
    "a ghost",
    "the trial",
    "a road trip",
    "the circus",
    "a storm",
    "the moon",
    "a chef",
    "the band",
]
WHEN = ["yesterday", "last week", "on friday", "this morning", "at night", "in march"]


def review_frame(cells, seed=0):
    """Reviews whose sentiment is the label and whose pronouns give `gender` (spurious); the
    topic and time are neutral filler drawn at random (about 600 texts per cell)."""
    rng = np.random.default_rng(seed)
    texts, labels, genders = [], [], []
    for label, gender, n in cells:
        words = POS if label == "positive" else NEG
        he = ("He", "his") if gender == "male" else ("She", "her")
        for _ in range(n):
            w, t, d = (
                words[rng.integers(len(words))],
                TOPICS[rng.integers(len(TOPICS))],
                WHEN[rng.integers(len(WHEN))],
            )
            texts.append(f"{he[0]} said {he[1]} pick about {t} was {w}, {d}.")
            labels.append(label)
            genders.append(gender)
    return pl.DataFrame({"text": texts, "label": labels, "gender": genders})


SPURIOUS = [
    ("positive", "male", 30),
    ("positive", "female", 4),
    ("negative", "male", 4),
    ("negative", "female", 30),
]


def text_store(db_path, cells=SPURIOUS, emb=None, first_text=None):
    frame = review_frame(cells)
    if first_text is not None:
        frame = frame.with_columns(pl.Series("text", [first_text, *frame["text"][1:]]))
    emb = emb or BowEmbedder()
    return make_store(db_path, frame, emb.encode(frame["text"].to_list()), text="text"), emb


def test_rule_counterfactuals_flip_and_swap_keep_case():
    c = counterfactuals(["He loved it. The acting was GOOD."], ["positive"], ["negative"])[0]
    assert c.text == "He hated it. The acting was BAD."
    assert "loved->hated" in c.prompt
    c = counterfactuals(
        ["She told him her plan."],
        ["x"],
        mode="attribute",
        source_values=["female"],
        target_values=["male"],
    )[0]
    assert c.text == "He told her his plan."
    # a flip goes one way: the negative review's words turn positive, its positive words stay
    # (a swap would turn "great" into "terrible" and pull the review back)
    c = counterfactuals(["A boring plot, though the cast was great."], ["negative"], ["positive"])[
        0
    ]
    assert c.text == "A fun plot, though the cast was great."
    # a review of the target sentiment already has nothing of the source's to change
    assert counterfactuals(["A great cast."], ["negative"], ["positive"])[0].text is None
    # nothing to substitute: no candidate rather than a copy
    assert counterfactuals(["plain words"], ["positive"], ["negative"])[0].text is None


def test_user_word_list_wins_and_unknown_values_cannot_be_served(tmp_path):
    p = tmp_path / "colours.tsv"
    p.write_text("warm\tcold\nred\tblue\nsun\tmoon\n")
    wl = load_word_list(p)
    gen = TextGenerator(word_lists=[wl])
    assert gen.can_serve("warm", "cold") and not gen.can_serve("left", "right")
    c = counterfactuals(
        ["Red sun."],
        ["x"],
        mode="attribute",
        source_values=["warm"],
        target_values=["cold"],
        generator=gen,
    )[0]
    assert c.text == "Blue moon."


def test_verification_rejects_a_sample_whose_label_does_not_hold():
    frame = review_frame(
        [
            ("positive", "male", 20),
            ("negative", "male", 20),
            ("positive", "female", 20),
            ("negative", "female", 20),
        ]
    )
    emb = BowEmbedder()
    ver = Verifier(
        emb.encode(frame["text"].to_list()),
        frame["label"].to_numpy(),
        frame["gender"].to_numpy(),
        margin=0.1,
    )
    cands = [
        "She said her pick about a dog was a great story, yesterday.",
        "She said her pick about a dog was a terrible story, yesterday.",
        "She said her pick about a dog was a great story, yesterday.",
    ]
    v = verify_candidates(
        ver,
        emb.encode(cands),
        ["positive", "positive", "positive"],
        ["female", "female", "female"],
        reference=emb.encode(frame["text"].to_list()),
    )
    assert v.keep.tolist() == [True, False, False]
    assert v.reason.tolist() == ["", "label", "duplicate"]
    # the group is checked too: a male text does not fill a female cell
    v = ver.check(
        emb.encode(["He said his pick about the sea was good."]), ["positive"], ["female"]
    )
    assert v.group_checked and v.reason.tolist() == ["group"]


def test_rule_generation_fills_small_groups_with_provenance(db_path, tmp_path):
    st, emb = text_store(db_path)
    # every missing sample generated (synthetic_share 1): the generator's own capacity
    policy = RepairPolicy(rebalance_by="gender", strategy="generate", synthetic_share=1.0)
    rep = plan_repairs(st, policy=policy, embedder=emb)
    g = rep.generation
    # 26 missing in each of the two small cells, 30 parents each: nearly all verified
    assert 45 <= g["kept"] <= 52 and g["candidates"] >= g["kept"]
    if g["kept"] < 52:  # the rest came from oversampling, and the plan says so
        assert any("filled them by oversampling" in n for n in rep.notes)
    gen = st.polars("SELECT * FROM generated WHERE verified AND row_id IS NOT NULL")
    assert len(gen) == g["kept"] and gen["backend"].unique().to_list() == ["rules"]
    assert gen["row_id"].min() >= 68  # fresh ids after the 68 samples
    # the edit swapped the pronouns of a parent with the same label
    r = gen.filter(pl.col("label") == "positive").row(0, named=True)
    parent = st.scalar("SELECT text FROM samples WHERE row_id = ?", [r["parent_row_id"]])
    assert parent.startswith("He ") and r["text"].startswith("She ")
    assert json.loads(r["details"])["columns"] == {"gender": "female"}
    out = tmp_path / "out"
    export(st, out, fmt="parquet", seed=0)
    tr = pl.read_parquet(out / "train.parquet")
    assert set(tr.group_by("label", "gender").len()["len"].to_list()) == {30}
    syn = tr.filter(pl.col("synthetic"))
    assert len(syn) == g["kept"] and syn["synthetic_parent"].is_not_null().all()
    assert set(syn["synthetic_generator"]) == {"text-attribute"}
    assert syn.filter(pl.col("gender") == "female")["text"].str.starts_with("She").all()
    man = json.loads((out / "manifest.json").read_text())
    assert man["rows_by_edit"]["add/generated"] == g["kept"]
    assert man["generators"][0]["backend"] == "rules"
    # the export reads back in as an ordinary table
    from datacure.store import Store
    from datacure.store.ingest import ingest_frame

    st2 = Store(tmp_path / "again.duckdb")
    ingest_frame(
        st2, pl.read_parquet(out / "train.parquet"), split="train", label="label", text="text"
    )
    assert st2.scalar("SELECT count(*) FROM samples WHERE synthetic") == g["kept"]
    st2.close()
    st.close()


def test_generate_mixes_generated_rows_and_copies_by_synthetic_share(db_path, tmp_path):
    st, emb = text_store(db_path)
    rep = plan_repairs(
        st, policy=RepairPolicy(rebalance_by="gender", strategy="generate"), embedder=emb
    )
    # default share 0.5: of the 26 missing in each small cell, 13 are generated (asked for, and
    # no more kept) and the rest are copies of the cell's own 4 real rows
    made = dict(
        st.fetchall("SELECT group_key, count(*) FROM generated WHERE row_id IS NOT NULL GROUP BY 1")
    )
    assert len(made) == 2 and all(10 <= n <= 13 for n in made.values())
    assert any("by design" in n and "synthetic_share 0.5" in n for n in rep.notes)
    out = tmp_path / "out"
    export(st, out, fmt="parquet", seed=0)
    tr = pl.read_parquet(out / "train.parquet")
    cells = tr.group_by("label", "gender").agg(
        pl.len().alias("n"), pl.col("synthetic").sum().alias("syn")
    )
    assert set(cells["n"].to_list()) == {30}
    small = cells.filter(pl.col("syn") > 0)
    assert len(small) == 2 and sorted(small["syn"].to_list()) == sorted(made.values())
    # the copies are real rows of the same cell (repeated ids), not rows of another cell
    real = tr.filter(~pl.col("synthetic"))
    for label, gender in small.select("label", "gender").iter_rows():
        in_cell = (pl.col("label") == label) & (pl.col("gender") == gender)
        cell = real.filter(in_cell)
        n_syn = len(tr.filter(pl.col("synthetic") & in_cell))
        assert cell["datacure_row_id"].n_unique() == 4 and len(cell) == 30 - n_syn
    st.close()


# --- the OpenAI-compatible path against a real local HTTP server --------------------------------
class _Chat(BaseHTTPRequestHandler):
    seen: list = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Chat.seen.append((self.path, self.headers.get("Authorization"), body))
        text = body["messages"][-1]["content"].split("Text: ", 1)[1]
        if "zebra" in text:  # a fixed bad answer: the sentiment flips
            reply = "She said her pick about a zebra was a horrible plot, yesterday."
        else:  # the fixed good answer: swap the pronouns, keep the rest
            reply = "Rewritten text: " + text.replace("He ", "She ").replace(" his ", " her ")
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(data.encode())

    def log_message(self, *a):
        pass


@pytest.fixture
def chat_server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Chat)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    _Chat.seen = []
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()
    srv.server_close()


def test_llm_endpoint_generation_is_verified(db_path, tmp_path, chat_server, monkeypatch):
    monkeypatch.setenv("DC_TEST_KEY", "sekrit-123")
    cells = [
        ("positive", "male", 20),
        ("positive", "female", 5),
        ("negative", "female", 20),
        ("negative", "male", 20),
    ]
    st, emb = text_store(
        db_path, cells, first_text="He said his pick about a zebra was a good film, yesterday."
    )
    rep = plan_repairs(
        st,
        rebalance_by="gender",
        strategy="generate",
        llm_url=chat_server,
        llm_model="fixed",
        llm_key_env="DC_TEST_KEY",
        synthetic_share=1.0,
        embedder=emb,
    )
    path, auth, body = _Chat.seen[0]
    assert path == "/v1/chat/completions" and auth == "Bearer sekrit-123"
    assert body["model"] == "fixed" and "gender" in body["messages"][-1]["content"]
    gen = st.polars("SELECT * FROM generated")
    assert set(gen["backend"]) == {"openai"}
    # the reply that flipped the sentiment was rejected, the others kept
    bad = gen.filter(pl.col("text").str.contains("horrible plot"))
    assert len(bad) >= 1 and not bad["verified"].any()
    kept = gen.filter(pl.col("row_id").is_not_null())
    # 15 missing; the replies the verifier trusts fill them, oversampling the rest
    assert 8 <= len(kept) <= 15 and kept["text"].str.starts_with("She ").all()
    assert rep.generation["kept"] == len(kept) and not kept["text"].str.contains("horrible").any()
    # the key is never stored
    st.close()
    export_dir = tmp_path / "o"
    from datacure.store import Store

    with Store(db_path) as st:
        export(st, export_dir)
    assert b"sekrit-123" not in db_path.read_bytes()
    assert "sekrit-123" not in (export_dir / "manifest.json").read_text()


def test_llm_helpers():
    assert chat_url("http://h:1") == "http://h:1/v1/chat/completions"
    assert chat_url("http://h:1/v1/") == "http://h:1/v1/chat/completions"
    assert chat_url("http://h/x/chat/completions") == "http://h/x/chat/completions"
    assert clean_reply('Here is the rewritten text: "She went."') == "She went."
    from datacure.store.errors import InputError

    with pytest.raises(InputError, match="cannot reach"):
        OpenAIChat("http://127.0.0.1:9/v1", timeout=2).complete([{"role": "user", "content": "x"}])


def _tiny_lm(path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    words = ["[UNK]", "[PAD]", "[EOS]", "he", "she", "said", "it", "was", "good", "bad", "."]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]"
    )
    fast.save_pretrained(path)
    cfg = GPT2Config(
        vocab_size=len(words),
        n_embd=16,
        n_layer=1,
        n_head=2,
        n_positions=256,
        eos_token_id=2,
        bos_token_id=2,
        pad_token_id=1,
    )
    GPT2LMHeadModel(cfg).save_pretrained(path)


def test_local_transformers_backend(tmp_path):
    _tiny_lm(tmp_path / "lm")
    gen = TextGenerator("transformers", local_model=str(tmp_path / "lm"))
    out = counterfactuals(["he said it was good ."], ["positive"], ["negative"], generator=gen)
    assert len(out) == 1 and "smallest edit" in out[0].prompt
    assert out[0].text is None or isinstance(out[0].text, str)
    assert gen.model.endswith("lm") and gen.chat.backend == "transformers"
