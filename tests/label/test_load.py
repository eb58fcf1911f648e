"""A small run of ``benchmarks/label_load.py``: concurrent annotators against the real server.

The full figure (20 annotators × 50 labels) is the benchmark's; this default-tier version runs
4 × 10 and checks the same things: every label stored exactly once with the value the press
means, a re-posted label refused with 409, no 5xx.
"""

from benchmark_scripts import load_benchmark


def test_concurrent_annotators_store_every_label_once(tmp_path):
    bench = load_benchmark("label_load")
    report = bench.run_load(4, 10, seed=1, workdir=tmp_path)
    assert report["client_errors"] == []
    assert report["labels_stored"] == 40 and report["stored_exactly_once"]
    assert report["mismatched_labels"] == 0
    assert report["duplicate_reposts_refused"] == 4
    assert report["responses_5xx"] == 0
    assert report["latency"]["label_post"]["n"] == 40
    assert report["latency"]["label_post"]["p95_ms"] > 0
