"""Repair planning: seeded issues turn into the right edits; reviews are stored and honoured;
rebalancing reaches its targets (checked on the export)."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from helpers import make_store

from datacure.generators.rebalance import compute_targets
from datacure.repair.edits import list_edits, review_edits
from datacure.repair.export import export
from datacure.repair.plan import plan_repairs
from datacure.repair.policy import RepairPolicy, make_policy
from datacure.store.errors import InputError


def seed_run(st, flags: list[tuple[str, int, dict]], run_id: int | None = None) -> int:
    """Insert one ok audit run whose flagged rows are (auditor, row_id, details)."""
    run_id = run_id or int(st.scalar("SELECT coalesce(max(run_id), 0) + 1 FROM runs"))
    with st.transaction():
        st.execute("INSERT INTO runs VALUES (?, now(), now(), '[]', '{}', 'test', 'ok')", [run_id])
        for auditor, row_id, details in flags:
            st.execute(
                "INSERT INTO issues VALUES (?, ?, ?, true, 0.1, ?)",
                [run_id, auditor, row_id, json.dumps(details)],
            )
    return run_id


def _frame(n_train=20, n_test=10):
    n = n_train + n_test
    return pl.DataFrame(
        {
            "text": [f"sample number {i}" for i in range(n)],
            "label": ["a" if i % 2 else "b" for i in range(n)],
            "part": ["train"] * n_train + ["test"] * n_test,
        }
    )


@pytest.fixture
def seeded(db_path):
    st = make_store(db_path, _frame(), split_column="part", text="text")
    # row ids: 0..19 train, 20..29 test
    flags = [
        ("exact_duplicate", 1, {"set_id": "e1", "members": [2, 3]}),
        ("exact_duplicate", 2, {"set_id": "e1", "members": [1, 3]}),
        ("exact_duplicate", 3, {"set_id": "e1", "members": [1, 2]}),
        ("near_duplicate", 5, {"set_id": "n1", "members": [4]}),  # only the copy is flagged
        ("near_duplicate", 6, {"set_id": "n2", "members": [21]}),  # across splits: both stay
        (
            "leakage",
            22,
            {"partners": [7], "partner_splits": ["train"], "similarity": 0.99, "kind": "near"},
        ),
        ("exact_duplicate", 13, {"set_id": "e2", "members": [7]}),  # 7 leaves by leakage
        ("contamination", 8, {"tier": 1, "similarity": 1.0}),
        ("contamination", 23, {"tier": 1, "similarity": 1.0}),  # test: kept
        ("label", 9, {"given_label": "a", "suggested_label": "b", "suggested_label_prob": 0.95}),
        ("label", 10, {"given_label": "b", "suggested_label": "a", "suggested_label_prob": 0.5}),
        ("label", 11, {"given_label": "a", "suggested_label": "b", "suggested_label_prob": 0.9}),
        ("label", 24, {"given_label": "b", "suggested_label": "a", "suggested_label_prob": 0.85}),
        ("outlier", 11, {"mean_distance": 0.9}),
        ("outlier", 12, {"mean_distance": 0.8}),
    ]
    seed_run(st, flags)
    yield st
    st.close()


def _edits(st) -> dict[int, tuple]:
    return {
        r[0]: r[1:]
        for r in st.fetchall(
            "SELECT row_id, action, reason, new_label, status FROM edits ORDER BY row_id"
        )
    }


def test_policy_turns_seeded_issues_into_the_right_edits(seeded):
    rep = plan_repairs(seeded)
    e = _edits(seeded)
    drops = {r for r, v in e.items() if v[0] == "drop"}
    # duplicates: one kept per set and split; 7 left by leakage so 13 is kept in its set
    assert drops == {2, 3, 5, 7, 8}
    assert e[2][1] == "exact_duplicate" and e[5][1] == "near_duplicate"
    assert e[7][1] == "leakage" and e[8][1] == "contamination"
    # relabels: confident ones only, in every split; 11 is not an outlier drop by default
    assert {r: v[2] for r, v in e.items() if v[0] == "relabel"} == {9: "b", 11: "b", 24: "a"}
    assert all(v[3] == "pending" for v in e.values())
    assert rep.counts["drop/exact_duplicate"] == 2 and rep.counts["relabel/label"] == 3
    assert "repair plan" in rep.summary()
    # kept representative is recorded
    kept = seeded.scalar(
        "SELECT json_extract(details, '$.kept_row_id')::INT FROM edits WHERE row_id = 2"
    )
    assert kept == 1


def test_policy_flags_and_config(seeded, tmp_path):
    cfg = tmp_path / "policy.yaml"
    cfg.write_text("repair:\n  duplicates: exact\n  relabel_threshold: 0.9\n  drop_from: all\n")
    plan_repairs(seeded, config=cfg, drop_outliers=True)
    e = _edits(seeded)
    drops = {r for r, v in e.items() if v[0] == "drop"}
    # exact sets only; contamination and outliers from every split; 11 dropped so not relabelled
    assert drops == {2, 3, 7, 8, 11, 12, 22, 23}
    assert {r for r, v in e.items() if v[0] == "relabel"} == {9}  # 0.95 >= 0.9 > 0.85
    # a flag that differs from its CLI default overrides the file
    pol = make_policy(cfg, relabel_threshold=0.5)
    assert pol.relabel_threshold == 0.5 and pol.duplicates == "exact"
    with pytest.raises(InputError, match="bad repair policy"):
        make_policy({"duplicatez": "exact"})
    with pytest.raises(InputError, match="drop-from"):
        plan_repairs(seeded, drop_from="nosuch")


def test_reviews_are_stored_and_honoured_by_rerun_and_export(seeded, tmp_path):
    plan_repairs(seeded)
    drop_of_8 = seeded.scalar("SELECT edit_id FROM edits WHERE row_id = 8")
    assert review_edits(seeded, accept="label") == 3
    assert review_edits(seeded, reject=str(drop_of_8)) == 1
    assert seeded.scalar("SELECT decision FROM reviews WHERE row_id = 8") == "reject"
    df = list_edits(seeded, top=0)
    assert set(df["status"]) == {"accepted", "rejected", "pending"}
    # a rerun replaces the pending edits and keeps the reviewed ones, without repeating them
    plan_repairs(seeded)
    e = seeded.fetchall("SELECT row_id, action, status FROM edits ORDER BY row_id, action")
    assert ("8", "drop") not in {(str(r), a) for r, a, s in e if s == "pending"}
    assert sum(1 for r, a, s in e if r == 8) == 1  # the rejected drop, not a new one
    assert sum(1 for r, a, s in e if a == "relabel") == 3
    assert all(s == "accepted" for r, a, s in e if a == "relabel")
    # export: pending and accepted edits applied, the rejected drop not
    rep = export(seeded, tmp_path / "out", fmt="parquet")
    train = pl.read_parquet(tmp_path / "out" / "train.parquet")
    ids = set(train["datacure_row_id"].to_list())
    assert 8 in ids and not ids & {2, 3, 5, 7}
    assert train.filter(pl.col("datacure_row_id") == 9)["label"].item() == "b"
    assert rep.counts["train"]["dropped"] == 4 and rep.counts["train"]["rows_out"] == 16
    man = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert man["edits_by_status"]["rejected"] == 1
    assert man["edits_applied"]["drop"]["exact_duplicate"] == 2
    assert man["audit_runs"] == [1]
    # a rule that names nothing is an error naming the choices
    with pytest.raises(InputError, match="no edit matches"):
        review_edits(seeded, accept="nosuch")


def test_repair_without_audit_is_a_clear_error(db_path):
    st = make_store(db_path, _frame(), split_column="part", text="text")
    with pytest.raises(InputError, match="no audit run"):
        plan_repairs(st)


def test_targets():
    c = {"a": 40, "b": 5, "c": 10}
    assert compute_targets(c, "undersample", 1.0) == {"a": 5, "b": 5, "c": 5}
    assert compute_targets(c, "undersample", 0.5) == {"a": 10, "b": 5, "c": 10}
    assert compute_targets(c, "oversample", 1.0) == {"a": 40, "b": 40, "c": 40}
    assert compute_targets(c, "oversample", 0.5) == {"a": 40, "b": 20, "c": 20}


def _grouped_frame(seed=0):
    """label x color cells of sizes 40, 5, 6, 30 (spurious colour), plus a test split."""
    rng = np.random.default_rng(seed)
    cells = [("0", "red", 40), ("0", "green", 5), ("1", "red", 6), ("1", "green", 30)]
    lab, col = [], []
    for y, c, n in cells:
        lab += [y] * n
        col += [c] * n
    n = len(lab)
    return pl.DataFrame(
        {
            "label": lab + ["0", "1"] * 5,
            "color": col + ["red", "green"] * 5,
            "x": rng.normal(size=n + 10),
            "part": ["train"] * n + ["test"] * 10,
        }
    )


@pytest.mark.parametrize(
    "strategy,ratio,expect",
    [
        ("undersample", None, {5}),
        ("oversample", None, {40}),
        ("oversample", 0.5, {40, 20, 30}),
    ],
)
def test_rebalanced_exports_have_balanced_groups(db_path, tmp_path, strategy, ratio, expect):
    st = make_store(db_path, _grouped_frame(), split_column="part")
    # no undersampling floor here (the default keeps 20 rows, as many as these groups hold)
    cfg = {"min_group_rows": 1}
    rep = plan_repairs(st, rebalance_by="color", strategy=strategy, ratio=ratio, seed=1, config=cfg)
    assert rep.run_id is None
    export(st, tmp_path / "o", fmt="parquet", seed=1)
    tr = pl.read_parquet(tmp_path / "o" / "train.parquet")
    sizes = tr.group_by("label", "color").len()["len"].to_list()
    assert set(sizes) == expect
    if ratio:
        assert min(sizes) >= ratio * max(sizes)
    te = pl.read_parquet(tmp_path / "o" / "test.parquet")
    assert len(te) == 10 and not te["synthetic"].any()  # the test split is untouched
    # deterministic for a seed
    plan_repairs(st, rebalance_by="color", strategy=strategy, ratio=ratio, seed=1, config=cfg)
    export(st, tmp_path / "o2", fmt="parquet", seed=1)
    assert pl.read_parquet(tmp_path / "o2" / "train.parquet").equals(tr)
    st.close()


def test_rebalance_by_unknown_column_names_the_choices(db_path):
    st = make_store(db_path, _grouped_frame(), split_column="part")
    with pytest.raises(InputError, match="color"):
        plan_repairs(st, rebalance_by="colour")


def test_generate_without_a_generator_falls_back_to_oversampling(db_path, tmp_path):
    # no text or image column: nothing can generate, so the short groups are oversampled
    st = make_store(db_path, _grouped_frame(), split_column="part")
    rep = plan_repairs(st, policy=RepairPolicy(rebalance_by="color", strategy="generate"))
    assert any("oversampling" in n for n in rep.notes)
    assert any("no generator" in n for n in rep.notes)
    export(st, tmp_path / "o", fmt="csv")
    tr = pl.read_csv(tmp_path / "o" / "train.csv")
    assert set(tr.group_by("label", "color").len()["len"].to_list()) == {40}
    assert not tr["synthetic"].any()


def test_rebalance_by_slice(db_path, tmp_path):
    st = make_store(db_path, _grouped_frame(), split_column="part")
    run = seed_run(st, [])
    with st.transaction():
        st.execute(
            "INSERT INTO slices VALUES (?, 's1', 'slice', 'green zeros', 5, 0.6, ?, '{}')",
            [run, list(range(40, 45))],
        )
    plan_repairs(st, rebalance_by="slice", strategy="oversample")
    export(st, tmp_path / "o", fmt="jsonl")
    tr = pl.read_ndjson(tmp_path / "o" / "train.jsonl")
    copies = tr.filter(pl.col("datacure_row_id").is_between(40, 44))
    # groups are label x slice: (0, s1) 5 rows, (0, rest) 40, (1, rest) 36: filled to 40
    assert len(copies) == 40
    assert len(tr) == 3 * 40


def test_undersample_floor_and_oversample_cap_say_when_they_win(db_path, tmp_path):
    st = make_store(db_path, _grouped_frame(), split_column="part")
    rep = plan_repairs(st, policy=RepairPolicy(rebalance_by="color", min_group_rows=20))
    assert any("undersample floor" in n and "20" in n for n in rep.notes)
    export(st, tmp_path / "u", fmt="parquet")
    tr = pl.read_parquet(tmp_path / "u" / "train.parquet")
    sizes = {(y, c): n for y, c, n in tr.group_by("label", "color").len().iter_rows()}
    assert sizes == {("0", "red"): 20, ("0", "green"): 5, ("1", "red"): 6, ("1", "green"): 20}
    rep = plan_repairs(
        st, policy=RepairPolicy(rebalance_by="color", strategy="oversample", max_copies=3)
    )
    assert any("max_copies" in n for n in rep.notes)
    export(st, tmp_path / "o", fmt="parquet")
    tr = pl.read_parquet(tmp_path / "o" / "train.parquet")
    sizes = {(y, c): n for y, c, n in tr.group_by("label", "color").len().iter_rows()}
    assert sizes == {("0", "red"): 40, ("0", "green"): 20, ("1", "red"): 24, ("1", "green"): 40}
    per_row = tr.group_by("datacure_row_id").len()["len"]
    assert per_row.max() <= 1 + 3  # the original and at most 3 copies
    # the plan reports its effect on every label x colour cell
    cell = next(c for c in rep.cells if c["label"] == "0" and c["group"] == "green")
    assert cell["rows"] == 5 and cell["added"] == 15 and cell["after"] == 20


def test_plan_that_would_empty_a_cell_is_refused_with_an_override(db_path):
    """Leakage flags that would drop 4 of the 5 rows of the rare (0, green) cell: refused,
    naming the cell and the override; with the override the plan goes through."""
    st = make_store(db_path, _grouped_frame(), split_column="part")
    green0 = st.polars(
        "SELECT row_id FROM samples WHERE split = 'train' AND label = '0' AND color = 'green'"
    )["row_id"].to_list()
    test_ids = st.polars("SELECT row_id FROM samples WHERE split = 'test'")["row_id"].to_list()
    flags = [
        ("leakage", t, {"partners": [g], "partner_splits": ["train"], "kind": "near"})
        for t, g in zip(test_ids, green0[:4])
    ]
    seed_run(st, flags)
    before = st.scalar("SELECT count(*) FROM edits")
    with pytest.raises(InputError, match="0 x green: 4 of 5") as err:
        plan_repairs(st, rebalance_by="color")
    assert "--max-cell-drop-share 1" in err.value.fix
    assert st.scalar("SELECT count(*) FROM edits") == before  # nothing written
    rep = plan_repairs(st, rebalance_by="color", max_cell_drop_share=1.0)
    assert rep.counts["drop/leakage"] == 4
