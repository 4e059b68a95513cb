"""The learned oedema segmenter's training: the readers' consensus as target, a mask threshold for each held-out
case chosen without its own readers, and a finished fold read back instead of trained again."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

pytest.importorskip("keras")

from training.sacroiliac.oedema import (QUICK, SESSIONS, THRESHOLDS, Examples, OedemaBatches,  # noqa: E402
                                        held_out_thresholds, trained)


def reader_examples(n: int = 4, size: int = 64) -> Examples:
    """Slices whose four sessions mark nested squares: 1, 2, 3 or 4 sessions agree on a pixel."""
    x = np.random.default_rng(0).random((n, size, size, 3)).astype(np.float32)
    y = np.zeros((n, size, size, len(SESSIONS)), np.float32)
    for s in range(len(SESSIONS)):
        y[:, 10 + 4 * s:50 - 4 * s, 10 + 4 * s:50 - 4 * s, s] = 1.0
    return Examples(x, y, np.ones(n))


def test_the_consensus_target_is_the_share_of_sessions_marking_each_pixel():
    examples = reader_examples()
    config = replace(QUICK, crop=64, t1_dropout=0.0)
    _, targets = OedemaBatches(examples, config)[0]
    # The whole slice fits the tile, so every tile holds all four nested squares (mirrored or not).
    assert set(np.unique(targets).round(2)) == {0.0, 0.25, 0.5, 0.75, 1.0}
    _, one_session = OedemaBatches(examples, replace(config, target="session"))[0]
    assert set(np.unique(one_session)) == {0.0, 1.0}


def test_each_held_out_case_gets_the_threshold_that_suits_the_other_cases():
    # Case "a" alone would prefer the lowest threshold; the other two agree best at 0.5.
    score = {(t, "a"): 2.0 * (1.0 - t) for t in THRESHOLDS}
    for case in ("b", "c"):
        score.update({(t, case): 1.0 - abs(t - 0.5) for t in THRESHOLDS})
    chosen = held_out_thresholds(score, ["a", "b", "c"])
    assert chosen["a"] == 0.5
    # For "b" the mean over "a" and "c" decides: 2 - 2t + 1 - |t - 0.5| is largest at the lowest threshold.
    assert chosen["b"] == chosen["c"] == THRESHOLDS[0]
    assert held_out_thresholds(score, ["a"]) == {"a": THRESHOLDS[0]}      # one fold alone: its own


def test_a_finished_fold_is_read_back_and_a_changed_one_trained_again(tmp_path):
    examples = reader_examples(n=2)
    calls = []

    def examples_fn():
        calls.append(1)
        return examples

    log: list[str] = []
    first = trained(examples_fn, QUICK, tmp_path, log.append)
    again = trained(examples_fn, QUICK, tmp_path, log.append)
    assert len(calls) == 1 and log[-1].endswith("finished earlier, read back")
    batch = np.asarray(examples.x[:1])
    assert np.allclose(np.asarray(first(batch, training=False)), np.asarray(again(batch, training=False)))
    trained(examples_fn, replace(QUICK, seed=1), tmp_path / "other", log.append)
    assert len(calls) == 2
