"""`agpt eval` and the running daemon judge the same frames identically (folder camera, results over ZeroMQ)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from eval_through_daemon import compare


@pytest.mark.slow
def test_daemon_gives_eval_numbers(cookie, lite_bundle):
    r = compare(lite_bundle, cookie.parent, "cookie", shots=4, max_images=16)
    assert r["received"] == r["frames"] == 16
    assert r["same_verdict"] == r["frames"]
    assert r["max_score_diff"] < 1e-5
    assert r["daemon"] == r["eval"]
