"""The bugs a careful read found (issue 16), each pinned by a test that failed before its fix."""

from __future__ import annotations

import gc
import json
import os
import pty
import select
import signal
import time
import tracemalloc
import weakref

import numpy as np
import polars as pl
import pytest
from hardening_util import DATACURE, proc_env
from helpers import make_store

from datacure.auditor.runner import run_audit


def _flagged_store(path, n=40):
    """A small store whose `null` auditor flags every fifth row (empty text), no embeddings."""
    frame = pl.DataFrame(
        {
            "text": [f"row number {i}" if i % 5 else "" for i in range(n)],
            "label": ["a" if i % 2 else "b" for i in range(n)],
        }
    )
    st = make_store(path, frame, text="text")
    run_audit(st, auditors=["null"])
    return st


# --- an AuditContext is not kept alive by a cache on its method ------------------------------
def test_audit_context_is_freed_after_use(db_path):
    from datacure.auditor.base import Requires
    from datacure.auditor.context import AuditContext

    st = _flagged_store(db_path)
    ctx = AuditContext(st)
    assert ctx.missing(frozenset({Requires.TEXT})) is None
    assert ctx.missing(frozenset({Requires.IMAGES})) == "needs an image column"
    ref = weakref.ref(ctx)
    del ctx
    gc.collect()
    assert ref() is None  # functools.cache on the method held every context forever
    st.close()


# --- dedupe of generated candidates: bounded memory, same greedy answer -----------------------
def _greedy_reference(c, keep, threshold):
    c = c / np.linalg.norm(c, axis=1, keepdims=True)
    kept: list[int] = []
    out = keep.copy()
    for i in np.flatnonzero(keep):
        if kept and (c[kept] @ c[i]).max() >= threshold:
            out[i] = False
        else:
            kept.append(i)
    return out


def test_dedupe_matches_the_greedy_rule_on_chains_and_masks():
    from datacure.generators.verify import dedupe

    rng = np.random.default_rng(0)
    base = rng.normal(size=(60, 8)).astype(np.float32)
    # chains a ~ b ~ c with a !~ c: the greedy rule keeps a and c, drops b
    step = rng.normal(size=(60, 8)).astype(np.float32) * 0.06
    cands = np.concatenate([base, base + step, base + 2 * step, base[:10]])
    mask = rng.random(len(cands)) > 0.1
    for thr in (0.99, 0.995, 0.999):
        got = dedupe(cands, None, thr, mask=mask)
        assert np.array_equal(got, _greedy_reference(cands, mask, thr))
        assert not got[~mask].any()


def test_dedupe_never_builds_the_n_by_n_matrix():
    from datacure.generators.verify import dedupe

    n = 6000  # an n x n float32 matrix is 144 MB; the blocks stay near 32 MB
    x = np.random.default_rng(1).normal(size=(n, 16)).astype(np.float32)
    x[n // 2 :] = x[: n // 2]  # every second half row is a copy of a first half row
    tracemalloc.start()
    keep = dedupe(x, None, 0.995)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert keep[: n // 2].all() and not keep[n // 2 :].any()
    assert peak < 80e6, peak


# --- rebalance group keys: one way, valid JSON whatever the values hold -----------------------
def test_rebalance_group_keys_survive_control_characters(db_path):
    from datacure.repair.plan import plan_repairs

    frame = pl.DataFrame(
        {
            "label": ["0"] * 12 + ["1"] * 12,
            "color": (["re\td"] * 9 + ['gr"een'] * 3) + (["re\td"] * 3 + ['gr"een'] * 9),
            "text": [f"t{i}" for i in range(24)],
        }
    )
    st = make_store(db_path, frame, text="text")
    plan_repairs(st, rebalance_by="color", strategy="oversample", config={"min_group_rows": 1})
    groups = [r[0] for r in st.fetchall("SELECT DISTINCT details->>'group' FROM edits")]
    assert groups
    cells = {tuple(json.loads(g)) for g in groups}  # a raw tab made json.loads fail
    assert cells == {("0", 'gr"een'), ("1", "re\td")}
    st.close()


# --- word lists: no cache keyed by id(), "her" by context, "as well as" kept ----------------
def test_substitutions_follow_their_own_word_list():
    from datacure.generators.text import WordList

    for i in range(50):  # freed lists' ids are reused at once: an id()-keyed cache mixed them up
        wl = WordList("w", ["x", "y"], [(f"a{i}", f"b{i}")])
        assert wl.substitution(0, 1).apply(f"a{i} a{i}")[0] == f"b{i} b{i}"
        del wl


def test_gender_swap_reads_her_by_what_follows():
    from datacure.generators.text import BUILTIN_LISTS

    to_male = BUILTIN_LISTS["gender"].substitution(1, 0)
    assert to_male.apply("She told her story.")[0] == "He told his story."
    assert to_male.apply("She told her that it was late.")[0] == "He told him that it was late."
    assert to_male.apply("They thanked her.")[0] == "They thanked him."
    assert to_male.apply("Her book came")[0] == "His book came"
    swap = BUILTIN_LISTS["gender"].substitution(0, 1)
    assert swap.apply("He told her the truth")[0] == "She told him the truth"


def test_sentiment_flip_keeps_as_well_as():
    from datacure.generators.text import BUILTIN_LISTS

    flip = BUILTIN_LISTS["sentiment"].substitution(0, 1, both_ways=False)
    new, changes = flip.apply("Good acting as well as a plot that works well.")
    assert new == "Bad acting as well as a plot that works poorly."
    assert changes == ["Good->bad", "well->poorly"]


# --- export --seed shuffles (it did nothing) -------------------------------------------------
def test_export_seed_shuffles_each_split_reproducibly(db_path, tmp_path):
    from datacure.repair.export import export

    frame = pl.DataFrame({"label": [str(i % 3) for i in range(200)], "v": list(range(200))})
    st = make_store(db_path, frame)

    def rows(seed, name):
        export(st, tmp_path / name, fmt="parquet", seed=seed)
        return pl.read_parquet(tmp_path / name / "train.parquet")["datacure_row_id"].to_list()

    plain, a, b, a2 = rows(None, "p"), rows(1, "a"), rows(2, "b"), rows(1, "a2")
    assert plain == sorted(plain)  # no seed: sorted by row id, as before
    assert a == a2 and a != b and a != plain and sorted(a) == plain
    man = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert man["seed"] == 1
    st.close()


# --- diffusers: the working size and a real inpainting mask ----------------------------------
class _Result:
    def __init__(self, ws):
        self.images = [np.full((ws, ws, 3), 0.5, np.float32)]


class _FakePipe:
    """Records the calls; a UNet of sample size 64 and VAE factor 8: a 512 px model."""

    vae_scale_factor = 8

    class unet:
        class config:
            sample_size = 64

    def __init__(self):
        self.calls = []

    def __call__(self, **kw):
        self.calls.append(kw)
        return _Result(kw["image"].size[0])


def _editor(inpaint: bool):
    from datacure.generators.img2img import DiffusersEditor

    ed = DiffusersEditor.__new__(DiffusersEditor)  # no checkpoint needed for the call logic
    ed.pipe, ed.inpaint, ed.model = _FakePipe(), inpaint, "fake"
    return ed


def test_diffusers_runs_at_the_pipeline_size_or_the_given_one():
    imgs = np.zeros((2, 32, 32, 3), np.uint8)
    ed = _editor(inpaint=False)
    out = ed.edit(imgs, ["p", "p"])
    assert out.shape == (2, 32, 32, 3)
    assert {c["image"].size for c in ed.pipe.calls} == {(512, 512)}  # was 64 px
    ed.edit(imgs, ["p", "p"], work_size=256)
    assert ed.pipe.calls[-1]["image"].size == (256, 256)


def test_inpainting_needs_a_mask_and_gets_the_one_given():
    from datacure.store.errors import InputError

    imgs = np.zeros((1, 32, 32, 3), np.uint8)
    ed = _editor(inpaint=True)
    with pytest.raises(InputError, match="mask"):
        ed.edit(imgs, ["p"])  # an all-white mask was passed: img2img under another name
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 8:24] = 255
    ed.edit(imgs, ["p"], work_size=64, mask=mask)
    sent = np.asarray(ed.pipe.calls[-1]["mask_image"])
    assert sent.shape == (64, 64) and sent.mean() == pytest.approx(255 / 4)


# --- review: Ctrl-C stops the loop and says the decisions are saved -------------------------
def test_review_interrupt_keeps_decisions_and_says_so(db_path):
    from datacure.repair.review import review_loop

    st = _flagged_store(db_path)
    answers = iter(["a"])

    def ask(_p):
        try:
            return next(answers)
        except StopIteration:
            raise KeyboardInterrupt from None

    rep = review_loop(st, top=5, ask=ask)
    assert rep.interrupted and rep.decisions == {"accept": 1}
    assert "decisions above are saved" in rep.summary()
    assert st.scalar("SELECT count(*) FROM reviews") == 1
    st.close()


def test_review_answer_is_one_line_and_eof_ends_it():
    import io

    from datacure.repair.review import _read_line

    stream = io.StringIO("r\r\nlabel b\n")
    assert _read_line(stream) == "r" and _read_line(stream) == "label b"
    with pytest.raises(EOFError):
        _read_line(stream)


def test_review_answer_wait_on_a_terminal_stops_on_sigint():
    """The terminal wait itself: a SIGINT while no answer has come raises KeyboardInterrupt (and
    an answer typed is read as one line)."""
    import threading

    from datacure.repair.review import _read_line

    main, slave = pty.openpty()
    stream = os.fdopen(slave, "r", closefd=True)
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        os.write(main, b"a\n")
        assert _read_line(stream) == "a"
        timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
        late = threading.Timer(20, os.write, (main, b"late\n"))  # a wait that missed it ends
        try:
            with pytest.raises(KeyboardInterrupt):  # armed inside: a stall can't raise outside
                timer.start(), late.start()
                _read_line(stream)  # not "late", 20 s on
        finally:
            late.cancel()
            timer.join()
    finally:
        signal.signal(signal.SIGINT, old)
        stream.close()
        os.close(main)


def _read_until(fd, needle: str, timeout: float, after: str = "") -> str:
    """The terminal's output until `needle` appears (after the first `after`, when given: the
    line editor may redraw an earlier prompt when it echoes an answer) or `timeout` passes."""

    def seen(out: bytes) -> bool:
        at = out.find(after.encode()) if after else 0
        return at >= 0 and needle.encode() in out[at:]

    out, end = b"", time.monotonic() + timeout
    while time.monotonic() < end and not seen(out):
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
    return out.decode(errors="replace")


def test_review_command_stops_on_ctrl_c_at_a_later_prompt(db_path):
    st = _flagged_store(db_path)
    st.close()
    env = proc_env()  # before the fork: the child of a threaded process runs as little as it can
    pid, fd = pty.fork()
    if pid == 0:  # the child: the installed script on a terminal, with the signals a shell gives
        # it (a blocked or ignored SIGINT in this test process, left by another test or by
        # the runner, would otherwise be inherited through exec and Ctrl-C never delivered)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.execve(str(DATACURE), ["datacure", "review", "--db", str(db_path)], env)
    done = (0, 0)
    try:
        assert "uit >" in _read_until(fd, "uit >", 120)
        os.write(fd, b"a\n")
        # the second prompt itself: a SIGINT sent while the second flag is still being shown
        # (before the prompt re-arms Python's handler) is polars' to swallow
        second = _read_until(fd, "uit >", 60, after="[2/")
        assert "uit >" in second[second.find("[2/") :]
        # polars' own SIGINT handler swallowed this one; then, sent at once after the prompt
        # appears, it often landed before the blocking read() began and was noticed by no one
        # (2 of 5 runs hung; the answer is now awaited in a select loop: _read_line)
        os.kill(pid, signal.SIGINT)
        text = _read_until(fd, "datacure repair", 60)
        deadline = time.monotonic() + 30
        while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        if done[0] == 0:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(fd)
    assert done[0] == pid, f"review did not exit after Ctrl-C; it printed: {text[-600:]!r}"
    assert os.waitstatus_to_exitcode(done[1]) == 130
    assert "decisions above are saved" in text and "as it was" not in text
    from datacure.store import Store

    with Store(db_path, read_only=True) as st:
        assert st.scalar("SELECT count(*) FROM reviews") == 1
