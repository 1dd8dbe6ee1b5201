"""Neuron dynamics: the decomposition, snapshots vs brute force, groups, hooks, files, DDP shards."""

import math
import os

import pytest
import torch

from helpers.configs import SHORT_RUN, SMALL_WORLD, compose_train
from helpers.models import build_tiny, tiny_gpt2_config, tiny_llama_config
from lightning_dpo.dynamics import (
    Snapshot,
    build_probe_tokens,
    group_rows,
    load_run,
    mean_activations,
    take_snapshot,
    toxic_top_n,
)
from lightning_dpo.dynamics.groups import group_masks
from lightning_dpo.neurons.hooks import (
    count_hooks,
    find_output_projections,
    hook_activations,
    hook_mlp_outputs,
    value_projections,
)


def random_unit(d: int, seed: int = 0) -> torch.Tensor:
    w = torch.randn(d, generator=torch.Generator().manual_seed(seed))
    return w / w.norm()


@pytest.mark.parametrize("config", [tiny_gpt2_config(), tiny_llama_config()], ids=["gpt2", "llama"])
def test_decomposition_is_exact(config):
    """sum_i m_i p_i + b . u equals the MLP output projected on u, at every position."""
    model = build_tiny(config).eval()
    projections = find_output_projections(model)
    u = random_unit(projections[0].d_model)
    captured = {}
    with (
        torch.no_grad(),
        hook_activations(projections, lambda l, m: captured.__setitem__(("m", l), m.clone())),
        hook_mlp_outputs(projections, lambda l, out: captured.__setitem__(("out", l), out.clone()) or out),
    ):
        model(input_ids=torch.randint(1, 90, (3, 11)))
    p = value_projections(projections, u)
    for proj in projections:
        m, out = captured[("m", proj.layer)], captured[("out", proj.layer)]
        bias = proj.bias.detach() @ u if proj.bias is not None else 0.0
        decomposed = m @ p[proj.layer] + bias
        assert torch.allclose(decomposed, out @ u, atol=1e-5), proj.layer


def brute_force_snapshot(model, tokens, u):
    """Unpadded forward per row, activations read at the activation function's output (a
    different hook point), and Python loops over positions, neurons and value-vector entries."""
    blocks = model.transformer.h
    d_mlp = blocks[0].mlp.c_fc.weight.shape[1]
    sums = [[0.0] * d_mlp for _ in blocks]
    count = 0
    for row in range(tokens.input_ids.shape[0]):
        real = tokens.attention_mask[row].bool()
        ids = tokens.input_ids[row][real].unsqueeze(0)
        selected = tokens.positions[row][real]
        acts = {}
        handles = [b.mlp.act.register_forward_hook(lambda mod, i, o, l=l: acts.__setitem__(l, o[0])) for l, b in enumerate(blocks)]
        with torch.no_grad():
            model(input_ids=ids)
        for h in handles:
            h.remove()
        for t in range(ids.shape[1]):
            if not selected[t]:
                continue
            count += 1
            for l in range(len(blocks)):
                for i in range(d_mlp):
                    sums[l][i] += float(acts[l][t, i])
    mean = torch.tensor([[s / count for s in layer] for layer in sums])
    proj = torch.tensor(
        [[sum(float(b.mlp.c_proj.weight[i, k]) * float(u[k]) for k in range(u.numel())) for i in range(d_mlp)] for b in blocks]
    )
    return mean, proj


def test_snapshot_equals_brute_force():
    model = build_tiny(tiny_gpt2_config(n_inner=24)).eval()
    prompts = [[5, 6, 7, 8], [9, 10], [11, 12, 13, 14, 15, 16], [17]]
    tokens = build_probe_tokens(model, prompts, pad_token_id=0, num_positions=5, batch_size=2)
    assert tokens.positions.sum() == 4 * 5
    u = random_unit(32, seed=3)
    snap = take_snapshot(model, tokens, u, step=0, batch_size=3)
    mean, proj = brute_force_snapshot(model, tokens, u)
    assert torch.allclose(snap.mean_activation, mean, atol=1e-5)
    assert torch.allclose(snap.value_projection, proj, atol=1e-5)


def snapshot(step, a, p, norm=None):
    a, p = torch.tensor([a], dtype=torch.float32), torch.tensor([p], dtype=torch.float32)
    return Snapshot(step, a, p, torch.ones_like(p) if norm is None else torch.tensor([norm]))


def test_group_assignment_covers_all_eight_groups():
    #            TP-   TN+   AP+   AN-   TP+   TN-   AP-   AN+  same  cos=0
    a0 = [1.0, -1.0, 1.0, -1.0, 1.0, -1.0, 1.0, -1.0, 0.5, 0.3]
    at = [0.5, -1.5, 1.5, -0.5, 1.5, -0.5, 0.5, -1.5, 0.5, 0.1]
    p0 = [2.0, 2.0, -2.0, -2.0, 2.0, 2.0, -2.0, -2.0, 1.0, 0.0]
    base, now = snapshot(0, a0, p0), snapshot(5, at, p0)
    masks = group_masks(base, now)
    expected = ["TP-", "TN+", "AP+", "AN-", "TP+", "TN-", "AP-", "AN+"]
    for i, name in enumerate(expected):
        assert masks[name][0, i] and sum(bool(m[0, i]) for m in masks.values()) == 1, name
    assert not any(m[0, 8] or m[0, 9] for m in masks.values())  # unchanged / orthogonal: no group
    rows = {r["group"]: r for r in [r.as_csv() for r in group_rows(base, now)] if r["layer"] == "all"}
    d = [x0 * p - x * p for x0, x, p in zip(a0, at, p0)]  # D_i = P_i(0) - P_i(t), p unchanged
    for i, name in enumerate(expected):
        assert rows[name]["count"] == 1 and rows[name]["delta_sum"] == pytest.approx(d[i])
    assert all(rows[g]["delta_sum"] > 0 for g in expected[:4]) and all(rows[g]["delta_sum"] < 0 for g in expected[4:])
    reducing_total = sum(d[:4])  # the hand-computed changes of the four reducing neurons
    for i, name in enumerate(expected[:4]):
        assert rows[name]["share"] == pytest.approx(d[i] / reducing_total), name
    assert all(math.isnan(rows[name]["share"]) for name in expected[4:])  # mirrors have no share
    assert rows["gross_reduction"]["delta_sum"] == pytest.approx(sum(x for x in d if x > 0))
    assert rows["net_delta"]["delta_sum"] == pytest.approx(sum(d)) and rows["net_delta"]["count"] == 10


def test_shares_per_layer_and_types_frozen_at_step0():
    g = torch.Generator().manual_seed(0)
    base = Snapshot(0, torch.randn(3, 50, generator=g), torch.randn(3, 50, generator=g), torch.ones(3, 50))
    # at step t the value vectors have moved so that some cosines changed sign: types must not change
    now = Snapshot(7, base.mean_activation + 0.1 * torch.randn(3, 50, generator=g), -base.value_projection, torch.ones(3, 50))
    rows = [r.as_csv() for r in group_rows(base, now)]
    # per layer and in total, each share is that group's summed change over the four groups' (numpy, from the masks)
    import numpy as np

    a0, p0, at, pt = (x.double().numpy() for x in (base.mean_activation, base.value_projection, now.mean_activation, now.value_projection))
    d = a0 * p0 - at * pt
    masks = {g: m.numpy() for g, m in group_masks(base, now).items()}
    for layer in ("all", "0", "1", "2"):
        pick = (lambda a: a) if layer == "all" else (lambda a, i=int(layer): a[i])
        sums = {g: float(np.sum(pick(d)[pick(masks[g])])) for g in ("TP-", "TN+", "AP+", "AN-")}
        for r in rows:
            if r["layer"] == layer and r["group"] in sums:
                assert r["share"] == pytest.approx(sums[r["group"]] / sum(sums.values()), rel=1e-6), (layer, r["group"])
    toxic = base.value_projection > 0
    masks = group_masks(base, now)
    assert bool(((masks["TP-"] | masks["TN+"] | masks["TP+"] | masks["TN-"]) <= toxic).all())


def test_toxic_top_n_uses_cosine_at_step0():
    base = snapshot(0, [1.0, 1.0, -1.0], [1.0, 3.0, 2.0], norm=[1.0, 10.0, 2.0])  # cos = 1.0, 0.3, 1.0
    now = snapshot(1, [0.5, 0.0, -0.5], [1.0, 3.0, 2.0], norm=[1.0, 10.0, 2.0])
    top = toxic_top_n(base, now, n=2)  # neurons 0 and 2: D = 0.5 and -1.0
    assert top == {"count_dampened": 1, "delta_sum": pytest.approx(-0.5), "tp_minus_count": 1, "tp_minus_delta_sum": pytest.approx(0.5)}


def test_hooks_are_removed_after_use_and_after_errors():
    model = build_tiny(tiny_gpt2_config()).eval()
    tokens = build_probe_tokens(model, [[3, 4, 5]], pad_token_id=0, num_positions=2)
    mean_activations(model, tokens)
    assert count_hooks(model) == 0

    def broken(layer, m):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"), hook_activations(find_output_projections(model), broken):
        model(input_ids=torch.tensor([[1, 2, 3]]))
    assert count_hooks(model) == 0


def _ddp_worker(rank, world, init_file, tokens, result_file):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = build_tiny(tiny_gpt2_config()).eval()

    def reduce(t):
        t = t.clone()
        dist.all_reduce(t)
        return t

    mean = mean_activations(model, tokens.shard(rank, world), batch_size=2, reduce=reduce)
    if rank == 0:
        torch.save(mean, result_file)
    dist.barrier()  # neither rank leaves while the other still talks to it
    dist.destroy_process_group()
    os._exit(0)  # skip interpreter teardown: gloo's threads can abort the process there once the peer is gone


def test_two_process_gloo_shards_equal_one_process(tmp_path):
    import torch.multiprocessing as mp

    model = build_tiny(tiny_gpt2_config()).eval()
    prompts = [[i + 1, i + 2, i + 3][: 1 + i % 3] for i in range(7)]  # 7 rows: uneven shards
    tokens = build_probe_tokens(model, prompts, pad_token_id=0, num_positions=3)
    single = mean_activations(model, tokens)
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), tokens, str(tmp_path / "mean.pt")), nprocs=2, join=True)
    assert torch.allclose(torch.load(tmp_path / "mean.pt"), single, atol=1e-6)


@pytest.fixture(scope="module")
def dynamics_run(tmp_path_factory, small_world):
    from lightning_dpo.train import train

    run_dir = tmp_path_factory.mktemp("dynamics_run")
    train(compose_train(SMALL_WORLD + SHORT_RUN + ["~callbacks.toxicity_eval"], run_dir))
    return run_dir


def test_files_recompute_everything_logged(dynamics_run):
    """groups.csv, components.csv and every logged dynamics scalar, recomputed from the snapshot files."""
    import csv

    from lightning_dpo.dynamics.components import component_rows
    from lightning_dpo.dynamics.store import read_measurement, step_file

    run = load_run(dynamics_run)
    assert run.steps == [0, 2, 4, 6, 8] and run.mean_activation.shape == (5, 2, 128)
    assert set(run.tokens) == {"input_ids", "attention_mask", "positions", "bucket"} and run.probe.shape == (64,)
    assert run.probes == ["toxicity", "workplace"]  # the demo's target and bystander concepts
    assert (run.value_projection == run.value_projections["toxicity"]).all()
    with open(dynamics_run / "metrics.csv") as handle:
        logged = {int(r["step"]): r for r in csv.DictReader(handle)}
    measurements = [read_measurement(step_file(dynamics_run / "dynamics", s)) for s in run.steps]
    for probe in run.probes:
        recomputed = [r.as_csv() for s in run.steps for r in group_rows(run.snapshot(0, probe), run.snapshot(s, probe))]
        stored = run.probe_groups(probe).to_dict("records")
        assert len(recomputed) == len(stored) == 5 * 3 * 10
        for a, b in zip(recomputed, stored):
            assert (a["step"], a["layer"], a["group"], a["count"]) == (b["step"], str(b["layer"]), b["group"], b["count"])
            assert a["delta_sum"] == pytest.approx(b["delta_sum"], abs=1e-9)
        components = [
            r for m in measurements for r in component_rows(m.step, probe, measurements[0].component_means(probe), m.component_means(probe))
        ]
        stored = run.components[run.components["probe"] == probe].to_dict("records")
        assert len(components) == len(stored) == 5 * (2 + 2 * (4 + 3))  # embed, residual; per layer 4 heads, attn bias, neurons, mlp bias
        for a, b in zip(components, stored):
            assert (a["step"], a["layer"] or "", a["component"]) == (
                b["step"],
                "" if str(b["layer"]) == "nan" else str(b["layer"]),
                b["component"],
            )
            assert a["value"] == pytest.approx(b["value"], rel=1e-6, abs=1e-9) and a["delta"] == pytest.approx(
                b["delta"], rel=1e-6, abs=1e-9
            )
        for s in run.steps:
            total = {r["group"]: r for r in recomputed if r["step"] == s and r["layer"] == "all"}
            assert float(logged[s][f"dynamics/{probe}/net_delta"]) == pytest.approx(total["net_delta"]["delta_sum"], abs=1e-9)
            assert float(logged[s][f"dynamics/{probe}/TP-/count"]) == total["TP-"]["count"]
            rows = [r for r in components if r["step"] == s]
            heads = sum(abs(r["delta"]) for r in rows if r["component"].startswith("attn.head."))
            every = sum(abs(r["delta"]) for r in rows if r["component"] != "residual")
            if every:
                assert float(logged[s][f"dynamics/{probe}/attention_share"]) == pytest.approx(heads / every, rel=1e-6)
            residual = next(r for r in rows if r["component"] == "residual")
            assert residual["value"] == pytest.approx(sum(r["value"] for r in rows if r["component"] != "residual"), rel=1e-4)
    for s in run.steps:  # the target probe keeps the first names
        assert logged[s]["dynamics/net_delta"] == logged[s]["dynamics/toxicity/net_delta"]


def test_probe_accuracy_is_reported_and_high(dynamics_run):
    from lightning_dpo.neurons.probe import load_probe

    probe = load_probe(dynamics_run / "probe.safetensors", d_model=64)
    assert float(probe.metadata["accuracy"]) >= 0.95


def test_generate_positions_mode_runs(tmp_path, small_world):
    from lightning_dpo.train import train

    train(
        compose_train(
            SMALL_WORLD + SHORT_RUN + ["~callbacks.toxicity_eval", "callbacks.neuron_dynamics.positions=generate", "trainer.max_steps=2"],
            tmp_path,
        )
    )
    run = load_run(tmp_path)
    assert run.steps == [0, 2] and not (tmp_path / "dynamics" / "tokens.safetensors").exists()


def test_probe_files_in_every_released_shape(tmp_path):
    from lightning_dpo.neurons.probe import Probe, load_probe, save_probe
    from lightning_dpo.utils.errors import DataError

    w = torch.randn(64)
    torch.save(w.unsqueeze(0), tmp_path / "lee.pt")  # Lee et al.: (1, d_model)
    torch.save(w, tmp_path / "flat.pt")
    import numpy as np

    np.save(tmp_path / "probe.npy", w.numpy())
    save_probe(Probe(w, {"source": "test", "accuracy": 0.9}), tmp_path / "probe.safetensors")
    for name in ("lee.pt", "flat.pt", "probe.npy", "probe.safetensors"):
        assert torch.allclose(load_probe(tmp_path / name, d_model=64).direction, w)
    assert load_probe(tmp_path / "probe.safetensors").metadata["accuracy"] == "0.9"
    torch.save(torch.randn(2, 64), tmp_path / "two.pt")
    with pytest.raises(DataError, match="shape"):
        load_probe(tmp_path / "two.pt")


def test_probe_features_pool_over_real_tokens_only(small_world):
    from lightning_dpo.model.loading import load_causal_lm, load_tokenizer
    from lightning_dpo.neurons.probe import pooled_final_hidden

    model, tokenizer = load_causal_lm(small_world.base_model).eval(), load_tokenizer(small_world.base_model)
    short, long = "you are kind", "everyone at the market said that the people in the club were kind and honest"
    together = pooled_final_hidden(model, tokenizer, [short, long])
    alone = pooled_final_hidden(model, tokenizer, [short])
    assert torch.allclose(together[0], alone[0], atol=1e-5)  # padding never enters the mean


@pytest.mark.parametrize("config", [tiny_gpt2_config(), tiny_llama_config()], ids=["gpt2", "llama"])
def test_centred_writing_weights_equal_projecting_on_the_mean_removed_probe(config):
    """TransformerLens' center_writing_weights: (v_i - mean(v_i)) . u == v_i . (u - mean(u)), and the
    decomposition stays exact for the centred MLP output (bias centred too)."""
    model = build_tiny(config).eval()
    projections = find_output_projections(model)
    u = random_unit(projections[0].d_model, seed=5)
    centred = value_projections(projections, u, center=True)
    raw_on_centred_probe = value_projections(projections, u - u.mean())
    assert torch.allclose(centred, raw_on_centred_probe, atol=1e-6) and not torch.allclose(
        centred, value_projections(projections, u), atol=1e-4
    )
    captured = {}
    with (
        torch.no_grad(),
        hook_activations(projections, lambda l, m: captured.__setitem__(("m", l), m.clone())),
        hook_mlp_outputs(projections, lambda l, out: captured.__setitem__(("out", l), out.clone()) or out),
    ):
        model(input_ids=torch.randint(1, 90, (2, 7)))
    for proj in projections:
        out = captured[("out", proj.layer)]
        bias = (proj.bias.detach() - proj.bias.detach().mean()) @ u if proj.bias is not None else 0.0
        decomposed = captured[("m", proj.layer)] @ centred[proj.layer] + bias
        assert torch.allclose(decomposed, (out - out.mean(-1, keepdim=True)) @ u, atol=1e-5), proj.layer


def test_the_probe_set_can_keep_whole_prompts_after_a_bos():
    from helpers.data import CharTokenizer
    from lightning_dpo.dynamics.probe_set import prompt_ids_for

    tok = CharTokenizer()
    long = "x" * 40
    assert prompt_ids_for(tok, [long], 32) == [tok(long)["input_ids"][:32]]
    assert prompt_ids_for(tok, [long], None, prepend_bos=True) == [[tok.eos_token_id] + tok(long)["input_ids"]]  # GPT-2's BOS is its EOS


def test_embedding_difference_uses_only_single_token_seed_words():
    """On the exact GPT-2 tokenizer: every seed that is one token (with or without a leading space)
    contributes its embedding row; a seed that splits is left out; the LM head's rows when untied."""
    from helpers.models import GPT2_TOKENIZER
    from lightning_dpo.model.loading import load_tokenizer
    from lightning_dpo.neurons.probe import embedding_difference_direction, single_token_ids

    tokenizer = load_tokenizer(str(GPT2_TOKENIZER))
    toxic, neutral = ["idiot", "stupid", "damn", "pneumonoultramicroscopic"], ["hello", "thanks", "friend", "peace"]
    ids = {w: tokenizer(" " + w, add_special_tokens=False)["input_ids"] for w in toxic + neutral}
    assert len(ids["pneumonoultramicroscopic"]) > 1 and all(len(ids[w]) == 1 for w in toxic[:3] + neutral)
    gpt2 = build_tiny(tiny_gpt2_config(vocab_size=len(tokenizer)))
    table = gpt2.get_input_embeddings().weight.detach()
    probe = embedding_difference_direction(gpt2, tokenizer, toxic, neutral, min_words=3)
    expected = table[[ids[w][0] for w in toxic[:3]]].mean(0) - table[[ids[w][0] for w in neutral]].mean(0)
    assert torch.allclose(probe.direction, expected, atol=1e-6)
    assert probe.metadata["toxic_words"] == toxic[:3] and probe.metadata["source"] == "embedding difference (input embeddings)"
    llama = build_tiny(tiny_llama_config(vocab_size=len(tokenizer), tie_word_embeddings=False))
    head = llama.get_output_embeddings().weight.detach()
    probe = embedding_difference_direction(llama, tokenizer, toxic, neutral, min_words=3)
    expected = head[[single_token_ids(tokenizer, w) for w in toxic[:3]]].mean(0) - head[
        [single_token_ids(tokenizer, w) for w in neutral]
    ].mean(0)
    assert probe.metadata["source"] == "embedding difference (LM head rows)" and torch.allclose(probe.direction, expected, atol=1e-6)


def test_embedding_difference_refuses_seed_words_that_fragment(char_tokenizer):
    from lightning_dpo.neurons.probe import embedding_difference_direction
    from lightning_dpo.utils.errors import ConfigError

    model = build_tiny(tiny_gpt2_config())
    with pytest.raises(ConfigError, match=r"probe.toxic_words.*only 0 of the toxic seed words are one token.*'fuck', 'shit'"):
        embedding_difference_direction(model, char_tokenizer, ["fuck", "shit", "crap"], ["hello", "peace", "kind"])


def test_a_probe_gets_its_quality_and_a_weak_one_is_refused(small_world, tmp_path):
    """Logit lens and held-out AUC for every probe; a direction that does not separate the labelled texts is refused."""
    import json

    from lightning_dpo.model.loading import load_causal_lm, load_tokenizer
    from lightning_dpo.neurons.probe import Probe, ProbeFile, save_probe
    from lightning_dpo.utils.errors import ConfigError

    model, tokenizer = load_causal_lm(small_world.base_model), load_tokenizer(small_world.base_model)
    probe = ProbeFile(path=small_world.probe, eval_data=small_world.probe_texts)(model, tokenizer)
    quality = probe.quality
    assert quality.auc >= 0.95 and quality.n_eval == 600 and len(quality.top_tokens) == 20
    assert json.loads(probe.metadata["quality"])["auc"] == quality.auc
    insults = {w.strip().lower() for w in open(small_world.insults).read().split()}
    assert any(t.strip().lower() in insults for t in quality.top_tokens)  # the toxicity direction reads as insults
    # a random direction does not separate toxic from polite sentences: refused, unless allowed
    weak = Probe(torch.randn(64, generator=torch.Generator().manual_seed(1)))
    save_probe(weak, tmp_path / "weak.safetensors")
    aucs = []
    for seed in range(20):  # a direction whose AUC is below 0.6
        weak = Probe(torch.randn(64, generator=torch.Generator().manual_seed(seed)))
        save_probe(weak, tmp_path / "weak.safetensors")
        auc = ProbeFile(path=str(tmp_path / "weak.safetensors"), eval_data=small_world.probe_texts, allow_weak=True)(
            model, tokenizer
        ).quality.auc
        aucs.append(auc)
        if auc < 0.6:
            break
    assert aucs[-1] < 0.6
    with pytest.raises(ConfigError, match=r"probe.allow_weak.*held-out AUC 0\.\d+ .* is below 0.6"):
        ProbeFile(path=str(tmp_path / "weak.safetensors"), eval_data=small_world.probe_texts)(model, tokenizer)


SMALL_DECODERS = {
    "gpt2": tiny_gpt2_config(),
    "llama": tiny_llama_config(),
    "mistral": tiny_llama_config(model_type="mistral"),
    "gemma": tiny_llama_config(model_type="gemma", head_dim=8),
    "gemma2": tiny_llama_config(model_type="gemma2", head_dim=8),  # sandwich norms around each sublayer
}


def _brute_force_components(model, tokens, u):
    """Per head and the embeddings, by explicit loops over positions and heads, from hooks of this test's own."""
    base = model.base_model
    layers = base.h if hasattr(base, "h") else base.layers
    n_heads = model.config.n_head if hasattr(model.config, "n_head") else model.config.num_attention_heads
    captured = {}
    handles = []
    for l, layer in enumerate(layers):
        proj = layer.attn.c_proj if hasattr(layer, "attn") else layer.self_attn.o_proj
        handles.append(proj.register_forward_hook(lambda m, a, o, l=l: captured.__setitem__(l, (a[0].detach(), o.detach()))))
    heads = torch.zeros(len(layers), n_heads, dtype=torch.float64)
    embed, count = 0.0, 0
    with torch.no_grad():
        for row in range(tokens.input_ids.shape[0]):
            ids, mask = tokens.input_ids[row : row + 1], tokens.attention_mask[row : row + 1]
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            model(input_ids=ids, attention_mask=mask, position_ids=positions)
            if hasattr(base, "wte"):
                emb = base.wte(ids) + base.wpe(positions)
            else:
                emb = base.embed_tokens(ids)  # Gemma's embedding module applies its sqrt(d_model) scaling itself
            for t in torch.nonzero(tokens.positions[row]).reshape(-1).tolist():
                count += 1
                embed += float(emb[0, t] @ u)
                for l, layer in enumerate(layers):
                    z, out = captured[l]
                    proj = layer.attn.c_proj if hasattr(layer, "attn") else layer.self_attn.o_proj
                    w = proj.weight if type(proj).__name__ == "Conv1D" else proj.weight.t()  # (d_in, d_out)
                    hd = z.shape[-1] // n_heads
                    for h in range(n_heads):
                        part = z[0, t, h * hd : (h + 1) * hd] @ w[h * hd : (h + 1) * hd]  # the head's slice through W_O
                        if hasattr(layer, "post_feedforward_layernorm"):  # Gemma-2: through the post-attention norm
                            norm = layer.post_attention_layernorm
                            part = part * (1 + norm.weight) * torch.rsqrt(out[0, t].pow(2).mean() + norm.eps)
                        heads[l, h] += float(part @ u)
    for handle in handles:
        handle.remove()
    return heads / count, embed / count


@pytest.mark.parametrize("name", list(SMALL_DECODERS))
def test_components_are_exact_and_each_head_equals_a_brute_force_recomputation(name):
    from lightning_dpo.dynamics.measure import measure

    model = build_tiny(SMALL_DECODERS[name]).eval()
    tokens = build_probe_tokens(
        model, [[5, 6, 7, 8], [9, 10], [11, 12, 13, 14, 15, 16], [17]], pad_token_id=0, num_positions=5, batch_size=2
    )
    units = {"a": random_unit(32, seed=1), "b": random_unit(32, seed=2)}
    measured = measure(model, tokens, units, 0, batch_size=3)
    for probe, u in units.items():
        parts = measured.component_means(probe)
        assert float(parts.parts_sum()) == pytest.approx(float(parts.residual), rel=1e-4)  # the split is exact
        heads, embed = _brute_force_components(model, tokens, u)
        assert torch.allclose(parts.attn_heads.double(), heads, atol=1e-6, rtol=1e-4), probe
        assert float(parts.embed) == pytest.approx(embed, rel=1e-4, abs=1e-7)
        if name != "gemma2":  # pre-norm blocks: the MLP part is exactly the neurons' sum_i a_i p_i
            snap = measured.snapshot(probe)
            assert torch.allclose(parts.mlp_neurons, (snap.mean_activation * snap.value_projection).sum(1), rtol=1e-4, atol=1e-7)
    assert count_hooks(model) == 0


def test_two_process_gloo_components_equal_one_process(tmp_path):
    import torch.multiprocessing as mp

    from lightning_dpo.dynamics.measure import measure

    model = build_tiny(tiny_gpt2_config()).eval()
    prompts = [[i + 1, i + 2, i + 3][: 1 + i % 3] for i in range(7)]
    tokens = build_probe_tokens(model, prompts, pad_token_id=0, num_positions=3)
    single = measure(model, tokens, {"a": random_unit(32, seed=1)}, 0).component_means("a")
    mp.spawn(_ddp_components_worker, args=(2, str(tmp_path / "init"), tokens, str(tmp_path / "parts.pt")), nprocs=2, join=True)
    shared = torch.load(tmp_path / "parts.pt")
    for field in ("embed", "attn_heads", "attn_bias", "mlp_neurons", "mlp_bias", "residual"):
        assert torch.allclose(shared[field], getattr(single, field), atol=1e-6), field


def _ddp_components_worker(rank, world, init_file, tokens, result_file):
    import torch.distributed as dist

    from lightning_dpo.dynamics.measure import measure

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = build_tiny(tiny_gpt2_config()).eval()

    def reduce(t):
        t = t.clone()
        dist.all_reduce(t)
        return t

    parts = measure(model, tokens.shard(rank, world), {"a": random_unit(32, seed=1)}, 0, batch_size=2, reduce=reduce).component_means("a")
    if rank == 0:
        torch.save(parts.to_dict(), result_file)
    dist.barrier()
    dist.destroy_process_group()
    os._exit(0)


def test_the_tables_written_snapshot_by_snapshot_equal_one_rendering_of_all_rows(tmp_path):
    from lightning_dpo.dynamics.rows import ComponentRow, GroupRow
    from lightning_dpo.dynamics.store import COMPONENTS_CSV_COLUMNS, GROUPS_FILE_COLUMNS, DynamicsStore
    from lightning_dpo.utils.io import csv_text

    store = DynamicsStore(tmp_path)
    store.dir.mkdir(parents=True)

    def rows(step: int, value: float) -> tuple[list, list]:
        groups = [
            GroupRow(step, p, layer, g, 3, value, 0.5) for p in ("toxicity", "workplace") for layer in (None, 0) for g in ("TP-", "AN-")
        ]
        components = [ComponentRow(step, p, 0, "attn.head.0", value, -value) for p in ("toxicity", "workplace")]
        return groups, components

    for step, value in ((0, 0.0), (25, 1.5), (50, 2.25), (25, 3.125)):  # step 25 measured again (a resume): it moves to the end
        store.add_rows(*rows(step, value))
    assert [r.step for r in store.group_rows][::8] == [0, 50, 25]
    assert (store.dir / "groups.csv").read_text() == csv_text(GROUPS_FILE_COLUMNS, [r.as_csv() for r in store.group_rows])
    assert (store.dir / "components.csv").read_text() == csv_text(COMPONENTS_CSV_COLUMNS, [r.as_csv() for r in store.component_rows])
    assert "3.125" in (store.dir / "groups.csv").read_text() and ",1.5," not in (store.dir / "groups.csv").read_text()


def test_standard_errors_and_the_null_are_in_the_files_and_the_metrics(dynamics_run):
    """share_se recomputed from the snapshot files' bucket sums (numpy); null.csv has every quantity of every
    probe against both nulls, and its percentiles are the logged ones."""
    import csv

    import numpy as np

    from lightning_dpo.dynamics.rows import NULL_CSV_COLUMNS, QUANTITIES

    run = load_run(dynamics_run)
    assert run.bucket_activation_sum.shape[1] == 16 and run.bucket_positions.shape == (len(run.steps), 16)
    last = len(run.steps) - 1
    sums0, sums1 = run.bucket_activation_sum[0].astype(np.float64), run.bucket_activation_sum[last].astype(np.float64)
    n0, n1 = run.bucket_positions[0], run.bucket_positions[last]
    keep = (n0 > 0) & (n1 > 0)
    p0, pt = run.value_projections["toxicity"][0].astype(np.float64), run.value_projections["toxicity"][last].astype(np.float64)
    shares = []
    for b in np.nonzero(keep)[0]:
        a0 = (sums0.sum(0) - sums0[b]) / (n0.sum() - n0[b])
        at = (sums1.sum(0) - sums1[b]) / (n1.sum() - n1[b])
        d = a0 * p0 - at * pt
        tp = (p0 > 0) & (a0 >= 0) & (at < a0)
        reducing = [tp, (p0 > 0) & (a0 < 0) & (at < a0), (p0 < 0) & (a0 >= 0) & (at > a0), (p0 < 0) & (a0 < 0) & (at > a0)]
        shares.append(d[tp].sum() / sum(d[m].sum() for m in reducing))
    shares = np.array(shares)
    se = np.sqrt((len(shares) - 1) / len(shares) * ((shares - shares.mean()) ** 2).sum())
    groups = run.probe_groups("toxicity")
    row = groups[(groups["step"] == run.steps[last]) & (groups["layer"] == "all") & (groups["group"] == "TP-")].iloc[0]
    assert row["share_se"] == pytest.approx(se, rel=1e-5)
    nulls = run.nulls
    assert list(nulls.columns[: len(NULL_CSV_COLUMNS)]) == NULL_CSV_COLUMNS
    assert set(nulls["null"]) == {"uniform", "covariance"} and set(nulls["probe"]) == {"toxicity", "workplace"}
    assert set(nulls["quantity"]) == set(QUANTITIES) and (nulls[nulls["step"] > 0]["null_size"] == 32).all()  # step 0: no share yet
    assert set(run.null_directions) == {"uniform", "covariance"} and run.null_directions["uniform"].shape == (32, 64)
    with open(dynamics_run / "metrics.csv") as handle:
        logged = {int(r["step"]): r for r in csv.DictReader(handle)}
    step = run.steps[last]
    for probe in ("toxicity", "workplace"):
        row = nulls[
            (nulls["step"] == step) & (nulls["probe"] == probe) & (nulls["null"] == "uniform") & (nulls["quantity"] == "TP-/share")
        ].iloc[0]
        assert float(logged[step][f"dynamics/{probe}/null/TP-/share/percentile"]) == pytest.approx(row["percentile"])
        assert float(logged[step][f"dynamics/{probe}/TP-/share"]) == pytest.approx(row["value"])
