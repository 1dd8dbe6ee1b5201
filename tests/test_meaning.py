"""Numbers that mean something beyond the nulls: a Table 1 that does not reward broken models, and
demo worlds that are the same world whatever the thread count."""

from __future__ import annotations

import math

import pytest

from lightning_dpo.analyze import fluency_bound, table_rows

pytestmark = pytest.mark.unit  # the unit tier: `pytest -m unit`, under a minute


def _m(tox: float, ppl: float) -> dict:
    return {"toxicity": tox, "perplexity": ppl, "scorer": "s", "f1": 0.5}


def test_a_row_outside_the_fluency_bound_gets_no_recovered_value():
    """Issue 20's case: patching all four groups 'recovered' 1.17 of DPO's drop at perplexity 9,688 (base 22)."""
    evaluations = [
        ("base", "none", 0, _m(0.30, 22.0)),
        ("base", "patch all four", 100, _m(0.10, 9688.0)),
        ("base", "ablate", 10, _m(0.25, 23.0)),
        ("DPO", "none", 0, _m(0.13, 28.5)),
    ]
    bound = fluency_bound(22.0, 28.5, 1.1, 1.5)
    assert bound == pytest.approx(max(28.5 * 1.1, 22.0 * 1.5))
    rows = {r["intervention"] if r["model"] == "base" else "dpo": r for r in table_rows(evaluations, bound)}
    assert math.isnan(rows["patch all four"]["recovered_share_of_dpo_drop"]) and rows["patch all four"]["within_fluency"].startswith("NO")
    assert rows["patch all four"]["perplexity_ratio"] == pytest.approx(9688.0 / 22.0)
    assert rows["ablate"]["recovered_share_of_dpo_drop"] == pytest.approx((0.30 - 0.25) / (0.30 - 0.13))
    assert rows["ablate"]["within_fluency"] == "yes" and rows["dpo"]["recovered_share_of_dpo_drop"] == pytest.approx(1.0)


def test_without_perplexity_nothing_is_judged():
    evaluations = [("base", "none", 0, _m(0.3, math.nan)), ("DPO", "none", 0, _m(0.1, math.nan))]
    rows = table_rows(evaluations, fluency_bound(math.nan, math.nan, 1.1, 1.5))
    assert rows[1]["within_fluency"] == "" and rows[1]["recovered_share_of_dpo_drop"] == pytest.approx(1.0)


# -- uncertainty of Table 1 (evaluation/bootstrap.py) -------------------------------------------------


def test_standard_errors_match_the_textbook_formula():
    import statistics

    from lightning_dpo.evaluation.bootstrap import mean_se, paired_difference

    scores = [0.1, 0.0, 0.9, 0.3, 0.2, 0.0, 0.7]
    assert mean_se(scores) == pytest.approx(statistics.stdev(scores) / math.sqrt(len(scores)))
    after = [0.0, 0.0, 0.5, 0.3, 0.1, 0.1, 0.2]
    diffs = [a - b for a, b in zip(after, scores)]
    change, se = paired_difference(scores, after)
    assert change == pytest.approx(statistics.mean(diffs)) and se == pytest.approx(statistics.stdev(diffs) / math.sqrt(len(diffs)))
    assert math.isnan(mean_se([0.5]))
    with pytest.raises(ValueError, match="same prompts"):
        paired_difference([0.1], [0.1, 0.2])


def test_the_recovered_interval_covers_the_truth_about_as_often_as_it_says():
    """Simulated prompts with a known recovered share (0.5): the 90% interval covers it in 80-97% of
    200 simulated evaluations, and a row identical to the base model sits at 0."""
    import torch

    from lightning_dpo.evaluation.bootstrap import recovered_interval

    g = torch.Generator().manual_seed(0)
    covered = 0
    for trial in range(200):
        base = (torch.rand(300, generator=g) < 0.40).double()  # binary-ish scores, as a classifier gives
        dpo = base * (torch.rand(300, generator=g) > 0.5).double()  # DPO removes half the toxic continuations
        row = torch.where(torch.rand(300, generator=g) < 0.5, base, dpo)  # recovers half of that, per prompt
        truth = 0.5
        interval = recovered_interval(base.tolist(), row.tolist(), dpo.tolist(), resamples=400, seed=trial)
        covered += interval.contains(truth)
    assert 160 <= covered <= 194
    same = recovered_interval([0.0, 1.0, 1.0, 0.0, 1.0] * 20, [0.0, 1.0, 1.0, 0.0, 1.0] * 20, [0.0, 0.0, 1.0, 0.0, 0.0] * 20)
    assert same.low == same.high == 0.0


def test_no_interval_when_dpo_drop_is_noise():
    from lightning_dpo.evaluation.bootstrap import recovered_interval

    base = [0.0, 1.0] * 30
    dpo = [1.0, 0.0] * 30  # the same mean: no drop to recover a share of
    interval = recovered_interval(base, base, dpo)
    assert math.isnan(interval.low) and interval.undefined_share > 0.05


def test_table_rows_carry_standard_errors_and_intervals_and_the_note_judges_the_drop():
    from lightning_dpo.analyze import uncertainty_note

    base = [1.0, 0.0, 1.0, 0.0] * 25
    dpo = [0.0, 0.0, 1.0, 0.0] * 25
    evaluations = [
        ("base", "none", 0, {**_m(0.5, 20.0), "scores": base}),
        ("base", "ablate", 4, {**_m(0.5, 20.0), "scores": list(base)}),
        ("DPO", "none", 0, {**_m(0.25, 21.0), "scores": dpo}),
    ]
    rows = table_rows(evaluations, fluency_bound(20.0, 21.0, 1.1, 1.5))
    assert rows[0]["toxicity_se"] == pytest.approx(0.5 * math.sqrt(100 / 99) / 10)
    assert rows[1]["recovered_low"] == rows[1]["recovered_high"] == 0.0
    assert rows[2]["recovered_low"] == rows[2]["recovered_high"] == 1.0
    assert "larger than twice its standard error" in uncertainty_note(evaluations)
    noisy = [
        ("base", "none", 0, {**_m(0.5, 20.0), "scores": [1.0, 0.0] * 5}),
        ("DPO", "none", 0, {**_m(0.4, 21.0), "scores": [1.0, 0.0, 0.0, 1.0, 0.0] * 2}),
    ]
    assert "within noise" in uncertainty_note(noisy)


def test_heatmap_colour_scales_do_not_stretch_a_small_difference():
    import numpy as np

    from lightning_dpo.compare import color_limits

    assert color_limits("share TP-", np.array([[31.0, 31.1]])) == (0.0, 100.0)
    assert color_limits("eval/toxicity", np.array([[0.02, 0.03]])) == (0.0, 1.0)
    low, high = color_limits("eval/perplexity", np.array([[30.0, 30.1], [np.nan, 30.05]]))
    assert high - low == pytest.approx(0.25 * 30.1) and low < 30.0 and high > 30.1  # 0.1 is a sliver of the scale
    assert color_limits("net_delta", np.array([[-2.0, 3.0]])) == (-2.0, 3.0)  # a real spread keeps its own range
