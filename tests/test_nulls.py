"""Numbers that mean something: the random-direction null and the jackknife, each checked against an
independent numpy computation on a tiny model, and recomputed from a run's files."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from helpers.models import build_tiny, tiny_gpt2_config
from lightning_dpo.dynamics.measure import measure
from lightning_dpo.dynamics.nulls import covariance_directions, summarize, uniform_directions
from lightning_dpo.dynamics.probe_set import assign_buckets, build_probe_tokens
from lightning_dpo.dynamics.rows import QUANTITIES, snapshot_tables

pytestmark = pytest.mark.unit  # the unit tier: `pytest -m unit`, under a minute

PROMPTS = [[(7 * i + j) % 90 + 1 for j in range(2 + i % 4)] for i in range(12)]
REDUCING = ("TP-", "TN+", "AP+", "AN-")
RULES = {
    "TP-": (1, 1, 0),
    "TN+": (1, 0, 0),
    "AP+": (0, 1, 1),
    "AN-": (0, 0, 1),
    "TP+": (1, 1, 1),
    "TN-": (1, 0, 1),
    "AP-": (0, 1, 0),
    "AN+": (0, 0, 0),
}


def _models():
    base = build_tiny(tiny_gpt2_config(n_inner=24)).eval()
    trained = build_tiny(tiny_gpt2_config(n_inner=24)).eval()
    trained.load_state_dict(base.state_dict())
    with torch.no_grad():  # what training would do: move the MLP weights a little
        g = torch.Generator().manual_seed(5)
        for block in trained.transformer.h:
            block.mlp.c_fc.weight.add_(0.05 * torch.randn(block.mlp.c_fc.weight.shape, generator=g))
            block.mlp.c_proj.weight.add_(0.05 * torch.randn(block.mlp.c_proj.weight.shape, generator=g))
    return base, trained


def _per_prompt_activations(model, tokens) -> np.ndarray:
    """(prompts, layers, d_mlp) summed activations at each prompt's averaged positions, read at the
    activation function's output (another hook point than the project's), one unpadded prompt at a time."""
    out = []
    for row in range(tokens.input_ids.shape[0]):
        real = tokens.attention_mask[row].bool()
        ids, selected = tokens.input_ids[row][real][None], tokens.positions[row][real]
        acts = {}
        handles = [
            b.mlp.act.register_forward_hook(lambda m, i, o, layer=layer: acts.__setitem__(layer, o[0].double().numpy()))
            for layer, b in enumerate(model.transformer.h)
        ]
        with torch.no_grad():
            model(input_ids=ids)
        for h in handles:
            h.remove()
        out.append(np.stack([acts[layer][selected.numpy()].sum(0) for layer in range(len(acts))]))
    return np.stack(out)


def _value_projection(model, u: np.ndarray) -> np.ndarray:
    return np.stack([b.mlp.c_proj.weight.detach().double().numpy() @ u for b in model.transformer.h])  # (L, d_mlp)


def _numpy_quantities(a0: np.ndarray, at: np.ndarray, p0: np.ndarray, pt: np.ndarray) -> dict[str, float]:
    d = a0 * p0 - at * pt
    sums = {}
    for g, (aligned, positive, increased) in RULES.items():
        mask = ((p0 > 0) if aligned else (p0 < 0)) & ((a0 >= 0) if positive else (a0 < 0)) & ((at > a0) if increased else (at < a0))
        sums[g] = float(d[mask].sum())
    total = sum(sums[g] for g in REDUCING)
    out = {f"{g}/delta_sum": v for g, v in sums.items()}
    out.update({f"{g}/share": sums[g] / total if total else math.nan for g in REDUCING})
    out["gross_reduction"], out["net_delta"] = float(d[d > 0].sum()), float(d.sum())
    return out


@pytest.fixture(scope="module")
def measured():
    base, trained = _models()
    tokens = build_probe_tokens(base, PROMPTS, pad_token_id=0, num_positions=4, batch_size=5, buckets=4, seed=1)
    probe = torch.randn(32, generator=torch.Generator().manual_seed(9))
    probe = probe / probe.norm()
    nulls = uniform_directions(32, 16, seed=100)
    directions = {"probe": probe, **dict(zip(nulls.names(), nulls.units))}
    m0 = measure(base, tokens, directions, 0, batch_size=5, n_buckets=4)
    m1 = measure(trained, tokens, directions, 1, batch_size=5, n_buckets=4)
    tables = snapshot_tables(m0, m1, ["probe"], {"uniform": nulls.names()})
    return base, trained, tokens, probe, nulls, m0, m1, tables


def test_uniform_directions_are_seeded_unit_vectors():
    a, b = uniform_directions(64, 8, seed=3), uniform_directions(64, 8, seed=3)
    assert torch.equal(a.units, b.units) and a.seeds == list(range(3, 11))
    assert torch.allclose(a.units.norm(dim=1), torch.ones(8), atol=1e-6)
    assert not torch.equal(a.units, uniform_directions(64, 8, seed=4).units)
    g = torch.Generator().manual_seed(5)
    v = torch.randn(64, generator=g, dtype=torch.float64)
    assert torch.allclose(a.units[2], (v / v.norm()).float())  # direction i is the normalised normal draw of seed + i


def test_covariance_directions_follow_the_covariance():
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.normal(size=(16, 16)))[0]
    variances = np.array([100.0] + [1.0] * 15)
    cov = (basis * variances) @ basis.T
    nulls = covariance_directions(torch.tensor(cov), 200, seed=0)
    along = (nulls.units.double().numpy() @ basis[:, 0]) ** 2  # squared cosine with the high-variance axis
    assert along.mean() > 0.5  # uniform directions: 1/16 on average
    values, vectors = np.linalg.eigh(cov)  # independent: the symmetric Sigma^(1/2) times the same z
    z = torch.randn(16, generator=torch.Generator().manual_seed(3), dtype=torch.float64).numpy()
    expected = ((vectors * np.sqrt(values)) @ vectors.T) @ z
    assert np.allclose(nulls.units[3].double().numpy(), expected / np.linalg.norm(expected), atol=1e-6)


def test_null_statistics_equal_numpy():
    null = torch.tensor([0.1, 0.5, 0.2, 0.9, 0.4, 0.4, 0.7, 0.3], dtype=torch.float64)
    s = summarize(0.4, null)
    values = null.double().numpy()
    assert s.mean == pytest.approx(values.mean()) and s.std == pytest.approx(values.std(ddof=1))
    assert s.q05 == pytest.approx(np.quantile(values, 0.05)) and s.q95 == pytest.approx(np.quantile(values, 0.95))
    assert s.percentile == pytest.approx(100 * (3 + 0.5 * 2) / 8) and not s.outside  # 3 below, 2 equal
    assert summarize(5.0, null).outside and summarize(5.0, null).percentile == 100.0
    assert math.isnan(summarize(1.0, torch.tensor([math.nan, math.nan])).mean)


def test_the_null_of_every_group_quantity_equals_a_numpy_recomputation(measured):
    base, trained, tokens, probe, nulls, _m0, _m1, tables = measured
    per_prompt0, per_prompt1 = _per_prompt_activations(base, tokens), _per_prompt_activations(trained, tokens)
    count = tokens.positions.sum().item()
    a0, at = per_prompt0.sum(0) / count, per_prompt1.sum(0) / count
    probe_value = _numpy_quantities(
        a0, at, _value_projection(base, probe.double().numpy()), _value_projection(trained, probe.double().numpy())
    )
    null_values = [
        _numpy_quantities(a0, at, _value_projection(base, u.double().numpy()), _value_projection(trained, u.double().numpy()))
        for u in nulls.units
    ]
    rows = {r.quantity: r for r in tables.nulls}
    assert set(QUANTITIES) <= set(rows)
    for q, expected in probe_value.items():
        row = rows[q].summary
        assert row.value == pytest.approx(expected, rel=1e-4, abs=1e-7), q
        null = np.array([v[q] for v in null_values])
        null = null[np.isfinite(null)]
        assert row.mean == pytest.approx(null.mean(), rel=1e-4, abs=1e-7), q
        assert row.q05 == pytest.approx(np.quantile(null, 0.05), rel=1e-4, abs=1e-7), q
        assert row.q95 == pytest.approx(np.quantile(null, 0.95), rel=1e-4, abs=1e-7), q
        below = (null < expected - 1e-9).sum() + 0.5 * (np.abs(null - expected) <= 1e-9).sum()
        assert row.percentile == pytest.approx(100 * below / len(null)), q


def test_the_null_of_the_components_equals_the_directions_measured_as_probes(measured):
    """A null direction's component quantities equal those of the same direction measured as a probe of its own."""
    _base, _trained, _tokens, _probe, nulls, m0, m1, _tables = measured
    names = nulls.names()
    as_probes = snapshot_tables(m0, m1, names[:3])
    for _k, name in enumerate(names[:3]):
        rows = [r for r in as_probes.components if r.probe == name]
        attention = sum(r.delta for r in rows if r.component.startswith("attn."))
        heads = sum(abs(r.delta) for r in rows if r.component.startswith("attn.head."))
        every = sum(abs(r.delta) for r in rows if r.component != "residual")
        from lightning_dpo.dynamics.components import component_deltas

        deltas = component_deltas(m0.component_means()[[m0.index(name)]], m1.component_means()[[m1.index(name)]])
        assert float(deltas["attention"][0]) == pytest.approx(attention, rel=1e-5, abs=1e-8)
        assert float(deltas["attention_share"][0]) == pytest.approx(heads / every, rel=1e-5)


def test_jackknife_standard_errors_equal_a_numpy_leave_one_bucket_out(measured):
    base, trained, tokens, probe, _nulls, _m0, _m1, tables = measured
    per_prompt0, per_prompt1 = _per_prompt_activations(base, tokens), _per_prompt_activations(trained, tokens)
    positions = tokens.positions.sum(1).numpy()
    bucket = tokens.bucket.numpy()
    assert np.array_equal(bucket, assign_buckets(len(PROMPTS), 4, seed=1).numpy())
    p0, pt = _value_projection(base, probe.double().numpy()), _value_projection(trained, probe.double().numpy())
    copies = []
    for b in range(4):  # leave bucket b out: the means of the other prompts' positions
        keep = bucket != b
        a0 = per_prompt0[keep].sum(0) / positions[keep].sum()
        at = per_prompt1[keep].sum(0) / positions[keep].sum()
        copies.append(_numpy_quantities(a0, at, p0, pt))
    rows = {r.group: r for r in tables.groups if r.layer is None}
    for g in REDUCING:
        values = np.array([c[f"{g}/share"] for c in copies])
        se = np.sqrt(3 / 4 * ((values - values.mean()) ** 2).sum())
        assert rows[g].share_se == pytest.approx(se, rel=1e-4, abs=1e-9), g
        deltas = np.array([c[f"{g}/delta_sum"] for c in copies])
        assert rows[g].delta_sum_se == pytest.approx(np.sqrt(3 / 4 * ((deltas - deltas.mean()) ** 2).sum()), rel=1e-4, abs=1e-9)
    net = np.array([c["net_delta"] for c in copies])
    assert rows["net_delta"].delta_sum_se == pytest.approx(np.sqrt(3 / 4 * ((net - net.mean()) ** 2).sum()), rel=1e-4, abs=1e-9)


def test_component_standard_errors_equal_a_leave_one_bucket_out_of_the_residual(measured):
    """The residual component's SE, from hidden states of each prompt computed by the model itself (output_hidden_states)."""
    _base, trained, tokens, probe, _nulls, _m0, _m1, tables = measured
    bucket = tokens.bucket.numpy()
    # the residual before the final norm: recompute it with a hook on ln_f's input, per prompt
    sums, counts = [], []
    for row in range(tokens.input_ids.shape[0]):
        real = tokens.attention_mask[row].bool()
        captured = {}
        handle = trained.transformer.ln_f.register_forward_pre_hook(lambda m, args: captured.__setitem__("x", args[0][0].double()))
        with torch.no_grad():
            trained(input_ids=tokens.input_ids[row][real][None])
        handle.remove()
        selected = tokens.positions[row][real]
        sums.append((captured["x"][selected] @ probe.double()).sum().item())
        counts.append(int(selected.sum()))
    sums, counts = np.array(sums), np.array(counts)
    copies = [sums[bucket != b].sum() / counts[bucket != b].sum() for b in range(4)]
    se = np.sqrt(3 / 4 * ((np.array(copies) - np.mean(copies)) ** 2).sum())
    residual = next(r for r in tables.components if r.component == "residual")
    assert residual.value == pytest.approx(sums.sum() / counts.sum(), rel=1e-4)
    assert residual.value_se == pytest.approx(se, rel=1e-3)


def test_group_totals_equal_a_neuron_by_neuron_loop_with_ties_and_stacks():
    """One pass over group codes equals summing neuron by neuron, p_i(0) = 0 and unchanged activations
    falling in no group; the same for every member of a stack of directions."""
    from lightning_dpo.dynamics.groups import GROUPS, group_totals

    g = torch.Generator().manual_seed(0)
    a0 = torch.randn(3, 7, generator=g).round(decimals=1)  # (L, d_mlp), rounded: some ties
    at = torch.where(torch.rand(3, 7, generator=g) < 0.3, a0, torch.randn(3, 7, generator=g))  # a third unchanged
    p0 = torch.randn(5, 3, 7, generator=g).round()  # (K, L, d_mlp): zeros among them
    pt = p0 + 0.1 * torch.randn(5, 3, 7, generator=g)
    totals = group_totals(a0, at, p0, pt)
    for k in range(5):
        for layer in range(3):
            sums, counts = dict.fromkeys(GROUPS, 0.0), dict.fromkeys(GROUPS, 0)
            for i in range(7):
                x0, x1, v0 = float(a0[layer, i]), float(at[layer, i]), float(p0[k, layer, i])
                if v0 == 0 or x1 == x0:
                    continue
                key = (int(v0 > 0), int(x0 >= 0), int(x1 > x0))
                group = next(name for name, rule in RULES.items() if rule == key)
                sums[group] += x0 * v0 - x1 * float(pt[k, layer, i])
                counts[group] += 1
            for j, group in enumerate(GROUPS):
                assert float(totals.delta_sum[j, k, layer]) == pytest.approx(sums[group], abs=1e-9)
                assert int(totals.count[j, k, layer]) == counts[group]


def test_summarize_many_equals_one_quantity_at_a_time_and_numpy():
    from lightning_dpo.dynamics.nulls import summarize_many

    null = torch.tensor([[0.1, 0.5, math.nan, 0.4], [math.nan] * 4, [1.0, 2.0, 3.0, 4.0]], dtype=torch.float64)
    values = [0.4, 0.2, math.nan]
    many = summarize_many(values, null)
    finite = null[0][torch.isfinite(null[0])].numpy()
    assert many[0].mean == pytest.approx(finite.mean()) and many[0].std == pytest.approx(finite.std(ddof=1))
    assert many[0].q05 == pytest.approx(np.quantile(finite, 0.05)) and many[0].percentile == pytest.approx(100 * (1 + 0.5) / 3)
    assert many[0].size == 3 and math.isnan(many[1].mean) and many[1].size == 0 and math.isnan(many[2].percentile)
    for value, row, got in zip(values, null, many):
        single = summarize(value, row)
        assert single.size == got.size
        for a, b in ((single.mean, got.mean), (single.std, got.std), (single.q95, got.q95), (single.percentile, got.percentile)):
            assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b)
