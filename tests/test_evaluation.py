"""Evaluation: interventions through the hooks, generation, perplexity, F1, scorers, commands."""

import csv
import json
import math
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import torch
import torch.nn.functional as F

from helpers.configs import SHORT_RUN, SMALL_WORLD, compose_command, compose_train
from helpers.data import CharTokenizer
from helpers.models import build_tiny, tiny_gpt2_config, tiny_llama_config
from lightning_dpo.dynamics import Snapshot
from lightning_dpo.dynamics import selection as select
from lightning_dpo.evaluation.f1 import token_f1
from lightning_dpo.evaluation.generation import generate_continuations
from lightning_dpo.evaluation.perplexity import perplexity
from lightning_dpo.evaluation.scorers import (
    PerspectiveScorer,
    ProfanityCheckScorer,
    WordListScorer,
    build_scorer,
)
from lightning_dpo.neurons import interventions as iv
from lightning_dpo.neurons.hooks import (
    count_hooks,
    find_output_projections,
    hook_activations,
    hook_mlp_outputs,
)
from lightning_dpo.utils.errors import ConfigError, LightningDPOError

IDS = torch.tensor([[3, 7, 11, 19, 23, 5], [8, 9, 10, 12, 13, 14]])


def capture(model, ids=IDS):
    """Activations m (input of each output projection) and MLP outputs, per layer."""
    seen = {}
    projections = find_output_projections(model)
    with (
        torch.no_grad(),
        hook_activations(projections, lambda l, m: seen.__setitem__(("m", l), m.clone())),
        hook_mlp_outputs(projections, lambda l, out: seen.__setitem__(("out", l), out.clone()) or out),
    ):
        logits = model(input_ids=ids).logits
    return seen, logits


@pytest.mark.parametrize("config", [tiny_gpt2_config(), tiny_llama_config()], ids=["gpt2", "llama"])
def test_patch_changes_exactly_the_intended_activations_and_nothing_after_exit(config):
    model = build_tiny(config).eval()
    before, logits_before = capture(model)
    index, values = torch.tensor([1, 5, 7]), torch.tensor([0.5, -0.25, 2.0])
    with iv.patch(model, {1: (index, values)}):
        during, _ = capture(model)
    _after, logits_after = capture(model)
    assert torch.equal(during[("m", 0)], before[("m", 0)])  # an earlier layer is untouched
    m1 = during[("m", 1)]
    assert torch.equal(m1[..., index], values.expand(2, 6, 3))  # patched activations equal the values
    others = torch.ones(m1.shape[-1], dtype=torch.bool)
    others[index] = False
    assert torch.equal(m1[..., others], before[("m", 1)][..., others])  # every other neuron of the layer unchanged
    assert torch.equal(logits_after, logits_before) and count_hooks(model) == 0


def test_patch_last_position_only():
    model = build_tiny(tiny_gpt2_config()).eval()
    before, _ = capture(model)
    with iv.patch(model, {0: (torch.tensor([2]), torch.tensor([9.0]))}, positions="last"):
        during, _ = capture(model)
    assert torch.all(during[("m", 0)][:, -1, 2] == 9.0)
    assert torch.equal(during[("m", 0)][:, :-1], before[("m", 0)][:, :-1])


@pytest.mark.parametrize("config", [tiny_gpt2_config(), tiny_llama_config()], ids=["gpt2", "llama"])
def test_ablating_a_whole_layer_leaves_only_the_bias(config):
    model = build_tiny(config).eval()
    projection = find_output_projections(model)[1]
    with iv.ablate(model, {1: torch.arange(projection.d_mlp)}):
        seen, _ = capture(model)
    out = seen[("out", 1)]
    bias = projection.bias if projection.bias is not None else torch.zeros(projection.d_model)
    assert torch.allclose(out, bias.detach().expand_as(out), atol=1e-6)


def test_subtract_direction_shifts_the_mlp_output_by_scale_times_unit():
    model = build_tiny(tiny_gpt2_config()).eval()
    before, _ = capture(model)
    direction = torch.randn(32)
    with iv.subtract_direction(model, 0, direction, scale=3.0):
        during, _ = capture(model)
    assert torch.allclose(before[("out", 0)] - during[("out", 0)], (3.0 * direction / direction.norm()).expand(2, 6, 32), atol=1e-5)
    assert count_hooks(model) == 0


def test_hooks_are_removed_when_the_body_raises():
    model = build_tiny(tiny_gpt2_config()).eval()
    with pytest.raises(ValueError), iv.ablate(model, {0: torch.tensor([1])}):
        raise ValueError("inside")
    assert count_hooks(model) == 0


def toy_snapshot():
    #                  a     cos (p with |v| = 1)
    a = torch.tensor([[0.9, 0.2, -0.3, 0.4, -0.1, 0.3, -0.2, 0.1]])
    p = torch.tensor([[0.8, 0.7, 0.6, -0.5, -0.4, -0.3, 0.2, 0.1]])
    return Snapshot(0, a, p, torch.ones_like(p))


def test_top_toxic_neuron_selection():
    snap = toy_snapshot()
    assert select.top_toxic_neurons(snap, 3)[0].tolist() == [0, 1, 2]
    assert select.top_toxic_neurons(snap, 3, positive_activation_only=True)[0].tolist() == [0, 1, 7]


def test_activation_editing_plan():
    snap = toy_snapshot()
    plan = select.editing_assignments(snap, alpha=0.1, beta=0.5, percentile=0.8)
    index, values = plan[0]
    chosen = dict(zip(index.tolist(), values.tolist()))
    # the 80th percentile of a (0.36) drops neurons 0 and 3; TP = {1, 7}: the larger |cos| (1) is damped;
    # TN = {2, 6}: the smaller |cos| (6) amplified; AP = {5} and AN = {4}: floor(1 * 0.5) = 0 neurons
    # (the published code's int(n * beta); rounding would have taken them)
    assert set(chosen) == {1, 6}
    assert chosen[1] == pytest.approx(0.2 * 0.9) and chosen[6] == pytest.approx(-0.2 * 1.1)
    index, values = select.editing_assignments(snap, alpha=0.1, beta=1.0, percentile=0.8)[0]
    chosen = dict(zip(index.tolist(), values.tolist()))
    assert set(chosen) == {1, 2, 4, 5, 6, 7} and chosen[4] == pytest.approx(-0.1 * 0.9) and chosen[5] == pytest.approx(0.3 * 1.1)


def test_batched_left_padded_generation_equals_one_prompt_at_a_time():
    model = build_tiny(tiny_gpt2_config()).eval()
    tokenizer = CharTokenizer()
    prompts = ["a", "a much longer prompt here", "mid size", "xyz!"]
    batched = generate_continuations(model, tokenizer, prompts, max_prompt_tokens=32, max_new_tokens=8, batch_size=4)
    single = [generate_continuations(model, tokenizer, [p], max_prompt_tokens=32, max_new_tokens=8)[0] for p in prompts]
    assert batched == single
    with torch.no_grad():  # and equals a plain greedy loop over the unpadded prompt, without a KV cache
        for p, text in zip(prompts, single):
            ids = tokenizer(p)["input_ids"]
            new = []
            for _ in range(8):
                token = int(model(input_ids=torch.tensor([ids + new])).logits[0, -1].argmax())
                new.append(token)
                if token == tokenizer.eos_token_id:
                    break
            assert text == tokenizer.decode([t for t in new if t != tokenizer.eos_token_id])


def test_perplexity_equals_exp_of_mean_nll():
    model = build_tiny(tiny_gpt2_config(n_positions=16)).eval()
    tokenizer = CharTokenizer()
    text = "the quick brown fox jumps over the lazy dog, twice over."
    result = perplexity(model, tokenizer, text, window=1024)  # capped to the 16-token context
    ids = tokenizer(text)["input_ids"]
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids), 16):
            window = ids[start : start + 16]
            logits = model(input_ids=torch.tensor([window])).logits[0].double()
            for t in range(1, len(window)):
                total -= float(F.log_softmax(logits[t - 1], -1)[window[t]])
                count += 1
    assert result["tokens"] == count and result["window"] == 16
    assert result["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-5)


def test_token_f1():
    assert token_f1([1, 2, 3], [1, 2, 3]) == 1.0
    assert token_f1([1, 1, 2], [1, 3]) == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))
    assert token_f1([4], [5]) == 0.0


def test_offline_scorers_for_real(tmp_path):
    (tmp_path / "insults.txt").write_text("stupid\nfool\nidiots\n")
    for words in (WordListScorer(words_file=str(tmp_path / "insults.txt")), WordListScorer(words=["stupid", "fool", "idiots"])):
        assert words.score(["you stupid fool", "kind and helpful people", "Idiots!", "foolish"]) == [1.0, 0.0, 1.0, 0.0]
    assert WordListScorer(words_file=str(tmp_path / "insults.txt")).name == "wordlist:insults.txt"
    with pytest.raises(ConfigError, match="exactly one of"):
        WordListScorer()
    profanity = ProfanityCheckScorer()
    clean, dirty = profanity.score(["have a wonderful day", "fuck you, you piece of shit"])
    assert 0 <= clean < 0.5 < dirty <= 1
    assert "crude proxy" in profanity.name
    with pytest.raises(ConfigError, match="accepted"):
        build_scorer("sentiment")


class _FakePerspective(BaseHTTPRequestHandler):
    requests: list = []
    fail_first = 1

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append(body)
        if type(self).fail_first > 0:
            type(self).fail_first -= 1
            self.send_response(429)
            self.end_headers()
            return
        text = body["comment"]["text"]
        scores = {
            a: {"summaryScore": {"value": (0.9 if "bad" in text else 0.1) * (1 if a == "INSULT" else 0.5)}}
            for a in body["requestedAttributes"]
        }
        payload = json.dumps({"attributeScores": scores}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


def test_perspective_scorer_retries_takes_the_max_and_resumes_from_its_cache(tmp_path):
    server = HTTPServer(("127.0.0.1", 0), _FakePerspective)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/analyze"
    sleeps = []
    cache = tmp_path / "cache.jsonl"
    scorer = PerspectiveScorer(attribute="max", api_key="k", url=url, cache_path=str(cache), sleep=sleeps.append, requests_per_second=1000)
    assert scorer.score(["a bad text", "a fine text"]) == [0.9, 0.1]  # max over the 7 attributes (INSULT)
    assert len(_FakePerspective.requests[0]["requestedAttributes"]) == 7
    assert len(_FakePerspective.requests) == 3 and sleeps  # one 429, retried after a back-off
    with open(cache, "a") as handle:
        handle.write('{"key": "trunc')  # a crash mid-line
    again = PerspectiveScorer(attribute="max", api_key="k", url=url, cache_path=str(cache), sleep=sleeps.append, requests_per_second=1000)
    assert again.score(["a bad text", "a fine text", "another bad one"]) == [0.9, 0.1, 0.9]
    assert len(_FakePerspective.requests) == 4  # only the new text was sent
    assert again.name == "perspective:max7" and PerspectiveScorer(api_key="k", url=url, attribute="TOXICITY").name == "perspective:TOXICITY"
    server.shutdown()
    with pytest.raises(ConfigError, match="NO_SUCH_VARIABLE_SET"):
        PerspectiveScorer(api_key_env="NO_SUCH_VARIABLE_SET")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, small_world):
    from lightning_dpo.train import train

    run_dir = tmp_path_factory.mktemp("trained")
    train(compose_train(SMALL_WORLD + SHORT_RUN + ["trainer.max_steps=12", "optim.lr=1e-3"], run_dir))
    return run_dir


def small_world_eval(world):
    return [
        f"prompts.source={world.eval_prompts}",
        f"perplexity.text={world.lm_text}",
        f"f1.data={world.gold}",
        "prompts.limit=24",
        "f1.limit=24",
        "scorer=toy",
        f"scorer.words_file={world.insults}",
    ]  # the small world's list (scorer=toy names the default world's)


def test_evaluate_command_from_run_dir_and_checkpoint(tmp_path, trained_run, small_world):
    from lightning_dpo.evaluate import run

    best = next((trained_run / "checkpoints").glob("best-step_*.ckpt"))
    pairs = ((trained_run, best), (trained_run / "hf_model", trained_run / "checkpoints" / "last.ckpt"))
    for folder, checkpoint in pairs:  # a run directory is its best checkpoint; hf_model/ is the last one
        results = []
        for source in (folder, checkpoint):
            out = tmp_path / f"{source.parent.name}-{source.name}"
            results.append(run(compose_command("evaluate", [f"model.name_or_path={source}", f"out={out}"] + small_world_eval(small_world))))
            assert (out / "eval.json").exists() and len((out / "generations.jsonl").read_text().splitlines()) == 24
        for key in ("toxicity", "perplexity", "f1"):
            assert results[0][key] == pytest.approx(results[1][key])
    assert results[0]["scorer"] == "wordlist:insults.txt" and "hf_model_best" not in results[0]["model"]


def test_evaluate_a_run_with_its_own_settings(tmp_path, trained_run):
    from lightning_dpo.evaluate import run

    result = run(compose_command("evaluate", [f"model.name_or_path={trained_run}", f"out={tmp_path}"]))
    meta = json.loads((trained_run / "eval" / "meta.json").read_text())
    assert "hf_model_best" in result["model"] and "the best checkpoint by val/loss (step" in result["model"]
    assert result["scorer"] == meta["scorer"] == "wordlist:insults.txt"
    prompts = (trained_run / "eval" / "prompts.jsonl").read_text().splitlines()
    assert str(trained_run / "eval" / "prompts.jsonl") in result["prompts"] and result["n_prompts"] == len(prompts) == 16
    assert result["perplexity_text"] == str(trained_run / "eval" / "perplexity_text.txt") and result["f1_data"].endswith("eval/f1.jsonl")
    with pytest.raises(LightningDPOError, match="'run' takes it from a training run directory"):
        run(compose_command("evaluate", [f"model.name_or_path={trained_run / 'hf_model'}", f"out={tmp_path}"]))


def test_analyze_command_on_the_demo_world(tmp_path, trained_run, small_world):
    from lightning_dpo.analyze import run

    overrides = [f"dpo={trained_run}", f"out={tmp_path}", "interventions.ablate_top=[8]", "interventions.ablate_top_positive=[8]"]
    summary = run(compose_command("analyze", overrides))  # everything from the run: base model, probe, probe set, evaluation
    assert summary["base"] == small_world.base_model and "hf_model_best" in summary["dpo"]
    assert summary["probe_set"]["source"].startswith(f"the run's probe set ({trained_run / 'dynamics' / 'prompts.jsonl'}")
    assert summary["evaluation"]["scorer"] == "wordlist:insults.txt"
    rows = summary["table"]
    labels = [r["intervention"] for r in rows]
    assert rows[0]["model"] == "base" and rows[-1]["model"] == "DPO"
    for expected in (
        "ablate top 8 toxic neurons",
        "patch TP- to DPO mean activations",
        "patch TP- + AN- to DPO mean activations",
        "patch all four reducing groups to DPO mean activations",
        "activation editing (alpha 0.05, beta 0.5)",
    ):
        assert expected in labels
    for name in ("table.md", "table.csv", "groups.md", "groups.csv", "analysis.json", "plots/toxicity_by_intervention.png"):
        assert (tmp_path / name).exists()
    analysis = json.loads(
        (tmp_path / "analysis.json").read_text(), parse_constant=lambda name: pytest.fail(f"bare {name} in analysis.json")
    )
    assert any(g["share"] is None for g in analysis["groups"])  # the mirror groups' share is undefined: null, not NaN
    # the offline analysis of the best checkpoint equals what the callback measured live at that step
    best_step = json.loads((trained_run / "hf_model_best" / "lightning_dpo.json").read_text())["step"]
    with open(trained_run / "dynamics" / "groups.csv") as handle:
        live = {
            r["group"]: r
            for r in csv.DictReader(handle)
            if int(r["step"]) == best_step and r["layer"] == "all" and r["probe"] == "toxicity"
        }
    offline = {g["group"]: g for g in summary["groups"]}
    assert set(live) == set(offline) and len(live) == 10
    for group, row in live.items():
        assert offline[group]["count"] == int(row["count"]), group
        assert offline[group]["delta_sum"] == pytest.approx(float(row["delta_sum"]), rel=1e-4, abs=1e-6), group


def test_realtoxicityprompts_shaped_rows_nested_field_and_challenging_filter(tmp_path):
    from lightning_dpo.data.texts import load_texts

    path = tmp_path / "rtp.jsonl"
    rows = [{"prompt": {"text": f"prompt {i}", "toxicity": 0.1}, "challenging": i % 3 == 0} for i in range(9)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert load_texts(str(path), field="prompt.text", where={"challenging": True}) == ["prompt 0", "prompt 3", "prompt 6"]
    assert len(load_texts(str(path), field="prompt.text", limit=4)) == 4


@pytest.mark.parametrize("source", ["run dir", "checkpoint"])
def test_the_probe_command_reads_run_directories_and_checkpoints(tmp_path, trained_run, small_world, source):
    from lightning_dpo.probe import run

    model = trained_run if source == "run dir" else trained_run / "checkpoints" / "last.ckpt"
    probe = run(
        compose_command(
            "probe", [f"model.name_or_path={model}", f"probe.data={small_world.probe_texts}", f"out={tmp_path / 'p.safetensors'}"]
        )
    )
    assert probe.direction.shape == (64,) and float(probe.metadata["accuracy"]) >= 0.9


def test_analyze_and_evaluate_take_the_probe_set_and_the_evaluation_prompts_from_separate_groups(tmp_path, trained_run):
    """By default both sets are the run's own (probe_set=run, eval_prompts=run through the prompts
    group); probe_set=<x> and eval_prompts=<x> change one alone; `prompts.*` keys still reach both."""
    from lightning_dpo.analyze import probe_set_prompts
    from lightning_dpo.evaluation.evaluate_model import settings_from_config
    from lightning_dpo.runs.directory import RunDirectory
    from lightning_dpo.training.preflight import EVALUATE_DEPRECATED_GROUPS, warn_deprecated_groups

    run = RunDirectory.find(trained_run)
    mine = tmp_path / "mine.jsonl"
    mine.write_text("".join(json.dumps({"text": f"my prompt {i}"}) + "\n" for i in range(5)))

    def sets(overrides: list[str]) -> tuple[list[str], list[str]]:
        cfg = compose_command("analyze", [f"dpo={trained_run}", *overrides])
        return probe_set_prompts(cfg, run)[0], list(settings_from_config(cfg, run).prompts)

    probe_set, evaluation = sets([])
    run_probe_set = [json.loads(line)["prompt"] for line in (trained_run / "dynamics" / "prompts.jsonl").read_text().splitlines()]
    assert probe_set == run_probe_set and len(probe_set) == 32
    assert len(evaluation) == 16 and probe_set != evaluation  # the run's probe set and its evaluation prompts
    custom = [f"probe_set.source={mine}", "probe_set.field=text", "probe_set.limit=3"]
    assert sets(custom) == ([f"my prompt {i}" for i in range(3)], evaluation)
    assert sets([f"eval_prompts.source={mine}", "eval_prompts.field=text"]) == (probe_set, [f"my prompt {i}" for i in range(5)])
    assert sets([f"prompts.source={mine}", "prompts.field=text"])[1] == sets([f"eval_prompts.source={mine}", "eval_prompts.field=text"])[1]
    cfg = compose_command("evaluate", [f"model.name_or_path={trained_run}", f"eval_prompts.source={mine}", "eval_prompts.field=text"])
    assert list(settings_from_config(cfg, run).prompts) == [f"my prompt {i}" for i in range(5)]
    with pytest.warns(FutureWarning, match=r"probe_set.max_prompts is deprecated: use probe_set.limit"):
        assert len(probe_set_prompts(compose_command("analyze", [f"dpo={trained_run}", "probe_set.max_prompts=4"]), run)[0]) == 4
    with pytest.warns(FutureWarning, match=r"'prompts=toy' is deprecated: use eval_prompts=toy"):
        warn_deprecated_groups(["prompts=toy"], EVALUATE_DEPRECATED_GROUPS)


def test_the_analysis_at_the_end_of_training_runs_in_the_main_process_alone(tmp_path, trained_run, monkeypatch):
    """train's `analyze=...` runs on the main process after the fit: under a multi-process launch
    (WORLD_SIZE set by torchrun or Lightning) it must not join a process group the others never enter."""
    from lightning_dpo.train import analyze_run

    monkeypatch.setenv("WORLD_SIZE", "2")
    rows = ["interventions.ablate_top=[8]", "interventions.ablate_top_positive=[]", "interventions.patch_groups=[[TP-]]"]
    summary = analyze_run(trained_run, [*rows, "interventions.editing=null", f"out={tmp_path}"])
    assert summary["evaluation"]["processes"] == 1 and not torch.distributed.is_initialized()
    assert [r["intervention"] for r in summary["table"]] == [
        "none",
        "ablate top 8 toxic neurons",
        "patch TP- to DPO mean activations",
        "none",
    ]
