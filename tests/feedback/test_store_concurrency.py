"""Several processes writing one store at once lose nothing (WAL, busy timeout, BEGIN IMMEDIATE).

Workers are forked (Linux) rather than spawned: a spawned worker would import torch again,
about 2 s of CPU each on a 2-core machine. The parent holds no open connection while forking.
"""

import multiprocessing as mp
import sqlite3
import sys
import time

import pytest

from unialign.feedback.store import FeedbackStore

N_WORKERS, N_LABELS, NEW_QUERIES = 8, 200, 5

pytestmark = pytest.mark.skipif(
    sys.platform != "linux", reason="forks the test process (spawn would take ~20 s)"
)


def _worker(path, worker, barrier, errors):
    """Labels its 200 queries one transaction at a time, adding a query every 40 labels."""
    try:
        labeler = f"human:w{worker % 4}"  # workers w and w+4 share a labeller, not queries
        first = 1 + (worker // 4) * N_LABELS
        with FeedbackStore(path) as store:
            barrier.wait(timeout=60)
            for j, qid in enumerate(range(first, first + N_LABELS)):
                store.add_labels([qid], [float(j % 2)], labeler=labeler, metadata={"w": worker})
                if j % (N_LABELS // NEW_QUERIES) == 0:
                    store.add_completion_queries(["p"], [f" w{worker}"], [f" j{j}"], step=j)
    except BaseException as err:  # report to the parent, which asserts
        errors.put(f"worker {worker}: {type(err).__name__}: {err}")
        raise


def test_eight_writers_at_once_lose_nothing(tmp_path):
    path = tmp_path / "fb.sqlite"
    n_queries = 2 * N_LABELS
    with FeedbackStore(path) as store:
        store.add_completion_queries(
            ["p"] * n_queries, [" a"] * n_queries, [" b"] * n_queries, step=0
        )
    ctx = mp.get_context("fork")
    barrier, errors = ctx.Barrier(N_WORKERS), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(path, w, barrier, errors)) for w in range(N_WORKERS)]
    start = time.monotonic()
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    elapsed = time.monotonic() - start
    assert all(not p.is_alive() for p in procs), "a worker hung"
    messages = [errors.get() for _ in range(errors.qsize())] if not errors.empty() else []
    assert [p.exitcode for p in procs] == [0] * N_WORKERS, messages

    con = sqlite3.connect(path)
    rows = con.execute("SELECT query_id, labeler, label, metadata FROM labels").fetchall()
    assert len(rows) == N_WORKERS * N_LABELS == 1600
    expected = {
        (q, f"human:w{w % 4}")
        for w in range(N_WORKERS)
        for q in range(1 + (w // 4) * 200, 201 + (w // 4) * 200)
    }
    assert {(q, who) for q, who, _, _ in rows} == expected  # each exactly once
    ids = [r[0] for r in con.execute("SELECT id FROM queries ORDER BY id")]
    assert ids == list(range(1, n_queries + N_WORKERS * NEW_QUERIES + 1))
    assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    con.close()
    print(f"8 writers: {elapsed:.1f} s")


def _create_worker(path, worker, barrier, errors):
    try:
        barrier.wait(timeout=60)
        with FeedbackStore(path) as store:  # every worker finds the file new, or half-made
            store.add_completion_queries(["p"], [f" w{worker}"], [" b"], step=worker)
    except BaseException as err:
        errors.put(f"worker {worker}: {type(err).__name__}: {err}")
        raise


def test_processes_creating_one_new_store_at_once(tmp_path):
    """The schema is created once (inside BEGIN IMMEDIATE, re-checked); every write lands."""
    path = tmp_path / "new.sqlite"
    ctx = mp.get_context("fork")
    barrier, errors = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_create_worker, args=(path, w, barrier, errors)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    messages = [errors.get() for _ in range(errors.qsize())] if not errors.empty() else []
    assert [p.exitcode for p in procs] == [0] * 4, messages
    with FeedbackStore(path) as store:
        assert store.count_queries(kind="completion") == 4
        assert sorted(store.completions([1, 2, 3, 4]).completions_1) == [" w0", " w1", " w2", " w3"]
    con = sqlite3.connect(path)
    assert con.execute("SELECT COUNT(*) FROM meta WHERE key = 'format'").fetchone() == (1,)
    con.close()
