"""Numbers that mean something beyond the nulls: a Table 1 that does not reward broken models, and
demo worlds that are the same world whatever the thread count."""

from __future__ import annotations

import math

import pytest

from lightning_dpo.analyze import fluency_bound, table_rows


def _m(tox: float, ppl: float) -> dict:
    return {"toxicity": tox, "perplexity": ppl, "scorer": "s", "f1": 0.5}


def test_a_row_outside_the_fluency_bound_gets_no_recovered_value():
    """Issue 20's case: patching all four groups 'recovered' 1.17 of DPO's drop at perplexity 9,688 (base 22)."""
    evaluations = [("base", "none", 0, _m(0.30, 22.0)), ("base", "patch all four", 100, _m(0.10, 9688.0)),
                   ("base", "ablate", 10, _m(0.25, 23.0)), ("DPO", "none", 0, _m(0.13, 28.5))]
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
