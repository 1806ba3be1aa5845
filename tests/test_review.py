"""`datacure review`: decisions typed on stdin land in `reviews` and `edits`, and repair honours
them."""

from __future__ import annotations

import pytest
from test_report import seed_audited_store
from typer.testing import CliRunner

from datacure import cli
from datacure.store import Store


@pytest.fixture
def seeded(tmp_path):
    t = seed_audited_store(tmp_path / "rv.duckdb", n=600)
    st = t["store"]
    # the seeded store already holds one review (reject of the worst row); start clean
    st.execute("DELETE FROM reviews")
    yield t
    st.close()


def _worst_label_rows(st, k):
    return [
        r[0]
        for r in st.fetchall(
            "SELECT row_id FROM issues WHERE auditor = 'label' AND is_issue ORDER BY score, row_id "
            "LIMIT ?",
            [k],
        )
    ]


def _status(st, row_id):
    return st.fetchall(
        "SELECT action, new_label, status, reason FROM edits WHERE row_id = ? ORDER BY edit_id",
        [row_id],
    )


def test_cli_review_from_stdin(seeded):
    st = seeded["store"]
    worst = _worst_label_rows(st, 4)
    given = dict(
        st.fetchall("SELECT row_id, label FROM samples WHERE row_id IN (SELECT unnest(?))", [worst])
    )
    classes = sorted({"world", "sports", "business", "scitech"} - {given[worst[2]]})
    path = str(st.path)
    st.close()
    # accept, reject, relabel (a typo first, then a real label), skip, quit
    stdin = f"a\nr\nl\nnot-a-label\n{classes[0]}\ns\nq\n"
    res = CliRunner().invoke(
        cli.app, ["review", "--db", path, "--auditor", "label", "--top", "10"], input=stdin
    )
    assert res.exit_code == 0, res.output
    assert "is not a label of this store" in res.output
    assert "[1/10] label" in res.output and "reviewed 4 flags" in res.output
    st = seeded["store"] = Store(path)
    rev = {
        r[0]: (r[1], r[2], r[3])
        for r in st.fetchall("SELECT row_id, auditor, decision, new_label FROM reviews")
    }
    assert rev == {
        worst[0]: ("label", "accept", None),
        worst[1]: ("label", "reject", None),
        worst[2]: ("label", "relabel", classes[0]),
    }
    # edits follow: the planned relabel accepted / rejected; the typed label replaces the plan
    assert [e[2] for e in _status(st, worst[0])] == ["accepted"]
    assert [e[2] for e in _status(st, worst[1])] == ["rejected"]
    e2 = _status(st, worst[2])
    assert [(a, s) for a, _, s, _ in e2] == [("relabel", "rejected"), ("relabel", "accepted")]
    assert e2[1][1] == classes[0] and e2[1][3] == "review"
    assert [e[2] for e in _status(st, worst[3])] == ["pending"]  # skipped: untouched


def test_reviewed_flags_do_not_come_back_and_skipped_do(seeded):
    from datacure.repair.review import pending_flags, review_loop

    st = seeded["store"]
    worst = _worst_label_rows(st, 3)
    answers = iter(["r", "s"])
    rep = review_loop(st, auditor="label", top=2, ask=lambda _p: next(answers))
    assert rep.decisions == {"reject": 1, "skip": 1}
    left = pending_flags(st, auditor="label", top=3)["row_id"].to_list()
    assert left[0] == worst[1] and worst[0] not in left
    assert (
        rep.remaining
        == st.scalar("SELECT count(*) FROM issues WHERE auditor = 'label' AND is_issue") - 1
    )


def test_end_of_input_quits_and_keeps_decisions(seeded):
    from datacure.repair.review import review_loop

    st = seeded["store"]
    answers = iter(["a"])

    def ask(_p):
        try:
            return next(answers)
        except StopIteration:
            raise EOFError from None

    rep = review_loop(st, top=5, ask=ask)
    assert rep.decisions == {"accept": 1}
    assert st.scalar("SELECT count(*) FROM reviews") == 1


def _first_flag(st, auditor, exclude=()):
    return int(
        st.scalar(
            "SELECT row_id FROM issues WHERE auditor = ? AND is_issue "
            "AND row_id NOT IN (SELECT unnest(?::BIGINT[])) ORDER BY score, row_id LIMIT 1",
            [auditor, list(exclude)],
        )
    )


def test_accept_without_planned_edit_applies_the_default_fix(seeded):
    from datacure.repair.review import record_decision

    st = seeded["store"]
    st.execute("DELETE FROM edits")
    # the seeded outlier scores flag no row at this size: flag its lowest-scored row
    st.execute(
        "UPDATE issues SET is_issue = true WHERE auditor = 'outlier' AND row_id = "
        "(SELECT arg_min(row_id, score) FROM issues WHERE auditor = 'outlier')"
    )
    r_label = _first_flag(st, "label")
    r_out = _first_flag(st, "outlier", exclude=[r_label])
    r_drift = _first_flag(st, "spurious_attribute", exclude=[r_label, r_out])
    sugg = st.scalar(
        "SELECT details->>'suggested_label' FROM issues WHERE auditor = 'label' AND row_id = ?",
        [r_label],
    )
    n = record_decision(st, r_label, "label", "accept")
    assert n == 1 and _status(st, r_label) == [("relabel", sugg, "accepted", "review")]
    record_decision(st, r_out, "outlier", "accept")
    assert _status(st, r_out) == [("drop", None, "accepted", "review")]
    record_decision(st, r_drift, "spurious_attribute", "accept")  # a finding, not a fault
    assert _status(st, r_drift) == []
    assert st.scalar("SELECT count(*) FROM reviews") == 3


def test_review_refuses_what_is_not_a_flag_and_changes_nothing(seeded):
    from datacure.repair.review import apply_review
    from datacure.store.errors import InputError

    st = seeded["store"]
    r = _first_flag(st, "label")
    clean = int(
        st.scalar("SELECT min(row_id) FROM issues WHERE auditor = 'label' AND NOT is_issue")
    )
    before = st.fetchall("SELECT * FROM edits ORDER BY edit_id")
    with pytest.raises(InputError, match="not flags of audit run"):
        apply_review(st, [(r, "label"), (clean, "label")], "accept")
    with pytest.raises(InputError, match="not a label of this store"):
        apply_review(st, [(r, "label")], "relabel", new_label="no-such-class")
    with pytest.raises(InputError, match="unknown review decision"):
        apply_review(st, [(r, "label")], "maybe")
    assert st.scalar("SELECT count(*) FROM reviews") == 0
    assert st.fetchall("SELECT * FROM edits ORDER BY edit_id") == before


def test_bulk_review_equals_one_by_one(seeded, tmp_path):
    """A bulk decision on many flags leaves `reviews` and `edits` exactly as the same decisions
    made one flag at a time (the terminal loop's way)."""
    import shutil

    from datacure.repair.review import apply_review, record_decision

    st = seeded["store"]
    path = st.path
    st.close()
    copy = tmp_path / "copy.duckdb"
    shutil.copy(path, copy)
    one, bulk = Store(path), Store(copy)
    try:
        flags = one.fetchall(
            "SELECT row_id, auditor FROM issues WHERE is_issue AND auditor IN "
            "('label', 'outlier', 'spurious_attribute') ORDER BY score, row_id LIMIT 60"
        )
        acc, rej, rel = flags[:30], flags[30:45], flags[45:]
        for db in (one, bulk):
            db.execute("DELETE FROM edits WHERE row_id % 3 = 0")  # some flags with no plan
        for r, a in acc:
            record_decision(one, r, a, "accept")
        for r, a in rej:
            record_decision(one, r, a, "reject")
        for r, a in rel:
            record_decision(one, r, a, "relabel", new_label="world")
        res = apply_review(bulk, acc, "accept")
        apply_review(bulk, rej, "reject")
        apply_review(bulk, rel, "relabel", new_label="world")
        assert res.flags == 30 and res.edits_changed > 0
        q_rev = "SELECT row_id, auditor, decision, new_label FROM reviews ORDER BY ALL"
        q_ed = "SELECT row_id, action, new_label, status, auditor FROM edits ORDER BY ALL"
        assert one.fetchall(q_rev) == bulk.fetchall(q_rev)
        assert one.fetchall(q_ed) == bulk.fetchall(q_ed)
        assert len(one.fetchall(q_rev)) == 60
    finally:
        one.close()
        bulk.close()


def test_repair_honours_reviews(seeded):
    """A re-plan keeps accepted review edits and plans nothing from rejected flags."""
    from datacure.repair.plan import plan_repairs
    from datacure.repair.review import record_decision

    st = seeded["store"]
    st.execute("DELETE FROM edits")
    a, b, c = (int(x) for x in _worst_label_rows(st, 3))
    record_decision(st, a, "label", "reject")
    record_decision(st, b, "label", "relabel", new_label="world")
    plan_repairs(st)
    assert _status(st, a) == []  # the rejected flag plans no relabel
    assert [(x, nl, s) for x, nl, s, _ in _status(st, b)] == [("relabel", "world", "accepted")]
    assert [(x, s) for x, _, s, _ in _status(st, c)] == [("relabel", "pending")]


def test_review_needs_an_audit(tmp_path):
    import polars as pl
    from helpers import make_store

    from datacure.repair.review import review_loop
    from datacure.store.errors import InputError

    st = make_store(
        tmp_path / "e.duckdb", pl.DataFrame({"text": ["a", "b"], "label": [0, 1]}), text="text"
    )
    with pytest.raises(InputError, match="no audit run"):
        review_loop(st, ask=lambda _p: "q")
    st.close()


def test_export_honours_reviews(seeded, tmp_path):
    """Decisions apply to the export without a new repair: a rejected flag keeps its label, a
    typed label and an accepted suggestion are written."""
    import polars as pl

    from datacure.repair.export import export
    from datacure.repair.review import record_decision

    st = seeded["store"]
    a, b, c = (int(x) for x in _worst_label_rows(st, 3))
    given = dict(st.fetchall("SELECT row_id, label FROM samples"))
    planned = dict(st.fetchall("SELECT row_id, new_label FROM edits WHERE action = 'relabel'"))
    typed = next(
        x for x in ("world", "sports", "business", "scitech") if x not in (given[b], planned[b])
    )
    record_decision(st, a, "label", "reject")
    record_decision(st, b, "label", "relabel", new_label=typed)
    record_decision(st, c, "label", "accept")
    export(st, tmp_path / "out", fmt="csv")
    rows = pl.concat([pl.read_csv(f) for f in sorted((tmp_path / "out").glob("*.csv"))])
    got = dict(zip(rows["datacure_row_id"].to_list(), rows["label"].to_list()))
    assert got[a] == given[a]
    assert got[b] == typed
    assert got[c] == planned[c] != given[c]
