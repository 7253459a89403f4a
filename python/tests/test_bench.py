"""The data-service benchmark (python/bench/feed_bench.py, `deploy/run-bench.sh feed`) runs end
to end on a small dataset: every method fed every sample (their checksums agree, or it fails),
and its figures are sane. No thresholds on rates: those are the benchmark's to print. It runs in
the test's process (torch is imported already: a process of its own would spend a minute or two
importing it again under emulation)."""

import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FEED = os.environ.get("GDRX_FEED", str(ROOT / "target" / "release" / "gdrx-feed"))


def test_the_feed_benchmark_runs_and_reports_every_method(rdma, tmp_path, capsys):
    if not os.path.exists(FEED):
        pytest.fail(f"{FEED} is missing: cargo build --release -p gdrx-feed (run-tests.sh does)")
    sys.path.insert(0, str(ROOT / "python" / "bench"))
    import feed_bench

    out = tmp_path / "feed.json"
    rc = feed_bench.main(["--feed", FEED, "--samples", "96", "--shape", "3,8,8", "--reps", "1",
                          "--slow-samples", "40", "--json", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0
    assert "gdrx/tcp" in printed, printed
    res = json.loads(out.read_text())
    assert res["schema"] == 1 and res["config"]["samples"] == 96
    methods = {m["method"]: m for m in res["methods"]}
    assert set(methods) == {"gdrx", "gdrx-nocredit", "dataloader-0", "dataloader-2", "tcp"}
    assert all(m["median"] > 0 and m["min"] <= m["median"] <= m["max"] for m in methods.values())
    assert methods["gdrx"]["copies"] == 0 and methods["tcp"]["copies"] == 1
    slow = res["slow_consumer"]
    # The slow consumer: no RNR NAK with credits, RNR NAKs without (16 slots, a feeder depth of 16
    # and a consumer that sleeps per sample).
    assert [r["rnr_naks"] for r in slow["on"]] == [0, 0], slow["on"]
    assert all(r["rnr_naks"] > 0 for r in slow["off"]), slow["off"]
    assert all(r["credits"]["waits"] > 0 for r in slow["on"])
    assert all(r["credits"] is None for r in slow["off"])
    with capsys.disabled():
        print(printed)
