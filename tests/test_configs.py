"""Configs: every experiment composes and instantiates (on tiny stand-ins), bad values fail early."""

import inspect
import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from helpers.configs import CONF, SHORT_RUN, SMALL_WORLD, compose_command, compose_train
from helpers.data import write_pairs
from helpers.models import tiny_gpt2_config, toy_width_decoder
from lightning_dpo.train import build_callbacks, train
from lightning_dpo.utils.config import build
from lightning_dpo.utils.errors import ConfigError, DataError

# the papers' presets (demo, the default bundle, is every other test's config; none is no bundle)
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml") if p.stem not in ("demo", "none"))


def stand_ins(tmp_path: Path, world) -> dict[str, list[str]]:
    """Per experiment: overrides that replace downloads by local tiny files of the same kind."""
    lee = tmp_path / "lee_pairs.jsonl"
    lee.write_text(
        "".join(json.dumps({"prompt_text": f"p {i}", "unpert_gen_text": " nice", "pert_gen_text": " bad"}) + "\n" for i in range(80))
    )
    probe = tmp_path / "probe.pt"
    torch.save(torch.randn(1, 64), probe)  # Lee et al.'s format: (1, d_model)
    prompts = world.eval_prompts
    trl_pairs = tmp_path / "pairs.jsonl"
    trl_pairs.write_text("".join(json.dumps({"prompt": f"p {i}", "chosen": " nice", "rejected": " bad"}) + "\n" for i in range(80)))

    def tiny(config: dict) -> str:
        return json.dumps(config).replace('"', "")

    def common(model_config: dict, pairs: Path) -> list[str]:
        return [
            "model.name_or_path=null",
            f"model.config={tiny(model_config)}",
            f"model.tokenizer={world.base_model}",
            f"data.path={pairs}",
            f"probe.path={probe}",
            f"prompts.source={prompts}",
            "prompts.field=prompt",
            "prompts.filter=null",
            "scorer=profanity_check",
            "callbacks.toxicity_eval.perplexity_text=null",
            "trainer.accelerator=cpu",
        ]

    return {  # the same architecture as the preset's model, at a tiny size
        "toxicity_gpt2_medium": common(tiny_gpt2_config(vocab_size=600, n_embd=64), lee) + ["trainer.precision=32-true"],
        "toxicity_generated_pairs": common(tiny_gpt2_config(vocab_size=600, n_embd=64), trl_pairs) + ["trainer.precision=32-true"],
        "toxicity_gemma2_2b": common(toy_width_decoder("gemma2", 600, head_dim=16), trl_pairs),
        "toxicity_mistral_7b": common(toy_width_decoder("mistral", 600), trl_pairs),
        "toxicity_llama3_8b": common(toy_width_decoder("llama", 600), trl_pairs),
        # SmolLM2 is Llama-shaped; its built assets (probe, pairs, prompts) are replaced by the same stand-ins
        "smollm2_toxicity": common(toy_width_decoder("llama", 600), trl_pairs) + ["probe.eval_data=null"],
    }


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_instantiates(experiment, tmp_path, small_world):
    overrides = stand_ins(tmp_path, small_world)
    assert experiment in overrides, f"add tiny stand-ins for experiment={experiment} to this test"
    cfg = compose_train([f"experiment={experiment}"] + overrides[experiment], tmp_path / "run")
    from lightning_dpo.model.loading import load_tokenizer

    tokenizer = load_tokenizer(cfg.model.tokenizer or cfg.model.name_or_path)
    datamodule = build(cfg.data, "data", tokenizer=tokenizer)
    datamodule.setup("fit")
    module = build(
        cfg.model,
        "model",
        loss=build(cfg.loss, "loss"),
        optimizer=build(cfg.optim.optimizer, "optim.optimizer"),
        scheduler=build(cfg.optim.scheduler, "optim.scheduler"),
    )
    callbacks = build_callbacks(cfg)
    trainer = build(cfg.trainer, "trainer", callbacks=callbacks, logger=False)
    assert module.loss_fn.beta == cfg.loss.beta and trainer.max_steps == cfg.trainer.max_steps
    assert module.policy.config.model_type == cfg.model.config.model_type  # the preset's architecture
    batch = next(iter(datamodule.train_dataloader()))
    with trainer.precision_plugin.forward_context():
        loss, _ = module.compute(batch, diagnostics=True)
    assert torch.isfinite(loss)
    from lightning_dpo.neurons.hooks import find_output_projections

    assert len(find_output_projections(module.policy)) == 2  # the neuron analysis finds its MLPs


def test_the_paper_experiment_has_the_published_settings():
    cfg = compose_train(["experiment=toxicity_gpt2_medium"])
    assert cfg.model.name_or_path == "gpt2-medium" and cfg.model.reference_dtype == "float16"
    assert (cfg.loss.type, cfg.loss.beta) == ("sigmoid", 0.1)
    assert cfg.optim.optimizer._target_ == "torch.optim.RMSprop" and cfg.optim.lr == 1e-6 and cfg.optim.warmup_steps == 150
    assert (cfg.data.batch_size, cfg.data.max_prompt_length, cfg.data.max_completion_length, cfg.data.val_size) == (4, 64, 64, 64)
    assert cfg.data.format == "lee" and cfg.trainer.gradient_clip_val == 10 and cfg.trainer.val_check_interval == 25
    assert cfg.callbacks.early_stopping.patience == 30 and cfg.callbacks.early_stopping.monitor == "val/loss"
    assert cfg.callbacks.model_checkpoint.monitor == "val/loss" and cfg.callbacks.stop_checkpoint.after_validation


def test_paper_experiment_fails_fast_without_its_files(tmp_path):
    with pytest.raises(ConfigError, match="is required but not set"):
        train(compose_train(["experiment=toxicity_gpt2_medium"], tmp_path / "run"))
    cfg = compose_train(["experiment=toxicity_gpt2_medium", f"data.path={tmp_path}/none.jsonl", "probe.path=x.pt"], tmp_path / "run")
    with pytest.raises(DataError, match="data.path"):
        train(cfg)
    pairs = write_pairs(tmp_path / "pairs.jsonl")
    with pytest.raises(ConfigError, match="probe.path"):  # the probe is required too
        train(compose_train(["experiment=toxicity_gpt2_medium", f"data.path={pairs}"], tmp_path / "run"))
    with pytest.raises(DataError, match="probe file not found"):
        train(compose_train(["experiment=toxicity_gpt2_medium", f"data.path={pairs}", f"probe.path={tmp_path}/no.pt"], tmp_path / "run"))
    assert not (tmp_path / "run").exists()  # refused before anything ran: nothing left


def test_world_yaml_matches_the_toy_world_defaults():
    from dataclasses import fields

    from lightning_dpo.toy import ToyWorld

    yaml = OmegaConf.to_container(OmegaConf.load(CONF / "world" / "toy.yaml"))
    defaults = {f.name: f.default for f in fields(ToyWorld) if f.name not in ("dir", "stats")}
    assert {k: v for k, v in yaml.items() if k != "dir"} == defaults


@pytest.mark.parametrize(
    "override, key",
    [
        ("loss.beta=-1", "loss.beta"),
        ("loss.beta=0", "loss.beta"),
        ("loss.type=nope", "loss.type"),
        ("optim.lr=0", "optim.lr"),
        ("optim.lr=-0.1", "optim.lr"),
        ("+loss.betta=0.1", "loss.betta"),
        ("callbacks.toxicity_eval.scorer={name: nope}", "scorer"),
        ("callbacks.neuron_dynamics.positions=sometimes", "callbacks.neuron_dynamics.positions"),
        ("model.on_nonfinite=ignore", "model.on_nonfinite"),
        ("data.val_size=-3", "data.val_size"),
        ("optim.schedule=linear", "optim.schedule"),
        ("optim.lr=inf", "optim.lr"),
        ("loss.beta=abc", "loss.beta"),
        ("trainer.max_steps=0", "trainer.max_steps"),
    ],
)
def test_invalid_values_fail_before_training_naming_the_key(override, key, tmp_path, small_world):
    cfg = compose_train(SMALL_WORLD + SHORT_RUN + [override], tmp_path)
    with pytest.raises(ConfigError) as info:
        train(cfg)
    assert key in str(info.value)
    assert not (tmp_path / "checkpoints").exists()  # nothing trained, nothing written


def test_a_users_scorer_probe_and_loss_from_their_own_module(tmp_path, small_world):
    """scorer=custom scorer._target_=..., probe=custom probe._target_=..., loss.type=<dotted path>: no edit of the package."""
    import json

    from lightning_dpo.model.losses import PreferenceLoss

    run_dir = tmp_path / "run"
    train(
        compose_train(
            SMALL_WORLD
            + SHORT_RUN
            + [
                "scorer=custom",
                "scorer._target_=helpers.extensions.ShoutScorer",
                "+scorer.threshold=2",
                "probe=custom",
                "probe._target_=helpers.extensions.FirstAxisProbe",
                "+probe.axis=3",
                "loss.type=helpers.extensions.margin_squared",
                "trainer.max_steps=2",
                "trainer.val_check_interval=2",
                "~callbacks.neuron_dynamics.probes",
            ],
            run_dir,
        )
    )
    assert json.loads((run_dir / "eval" / "meta.json").read_text())["scorer"] == "shout>2"
    assert json.loads((run_dir / "dynamics" / "meta.json").read_text())["probe"]["source"] == "axis 3"
    loss = PreferenceLoss(type="helpers.extensions.margin_squared", beta=0.5)
    import torch

    out = loss(torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([-1.5]), torch.tensor([-1.5]), torch.tensor([3]), torch.tensor([3]))
    assert float(out.loss) == pytest.approx(float(torch.nn.functional.softplus(torch.tensor(-0.5 * 1.0)) ** 2))
    with pytest.raises(ConfigError, match="cannot import the loss 'helpers.extensions.nope'"):
        PreferenceLoss(type="helpers.extensions.nope")


def _prompt_sets(cfg) -> tuple[dict, dict]:
    return (
        OmegaConf.to_container(cfg.callbacks.neuron_dynamics.prompts, resolve=True),
        OmegaConf.to_container(cfg.callbacks.toxicity_eval.prompts, resolve=True),
    )


def test_the_probe_set_and_the_evaluation_prompts_are_separate_groups(small_world):
    """probe_set= and eval_prompts= choose each set alone; by default both are the prompts group's."""
    dynamics, evaluation = _prompt_sets(compose_train(SMALL_WORLD))
    assert dynamics == evaluation and dynamics["source"].endswith("eval_prompts.jsonl")  # the demo's held-out prompts
    dynamics, evaluation = _prompt_sets(compose_train([*SMALL_WORLD, "probe_set=validation", "eval_prompts=rtp_challenging"]))
    assert dynamics["source"] == "validation" and evaluation["source"] == "allenai/real-toxicity-prompts"
    assert evaluation["filter"] == {"challenging": True}
    dynamics, evaluation = _prompt_sets(compose_train([*SMALL_WORLD, "probe_set.source=mine.txt", "probe_set.field=text"]))
    assert (dynamics["source"], dynamics["field"]) == ("mine.txt", "text") and evaluation["source"].endswith("eval_prompts.jsonl")
    # every prompt set is an option of both groups, the same set
    for option in sorted(p.stem for p in (CONF / "prompts").glob("*.yaml") if p.stem != "run"):
        alias = _prompt_sets(compose_train([*SMALL_WORLD, f"prompts={option}"]))
        assert _prompt_sets(compose_train([*SMALL_WORLD, f"probe_set={option}", f"eval_prompts={option}"])) == alias, option


def test_prompts_on_the_command_line_still_sets_both_with_a_deprecation_warning(small_world):
    from lightning_dpo.training.preflight import preflight, warn_deprecated_groups

    cfg = compose_train([*SMALL_WORLD, "prompts=validation"])
    dynamics, evaluation = _prompt_sets(cfg)
    assert dynamics["source"] == evaluation["source"] == "validation"
    with pytest.warns(FutureWarning, match="probe_set=validation eval_prompts=validation"):
        preflight(cfg, overrides=["prompts=validation"])  # what a run checks before it starts
    with pytest.warns(FutureWarning, match=r"'prompts=validation' is deprecated: use probe_set=validation eval_prompts=validation"):
        warn_deprecated_groups(["prompts=validation", "prompts.limit=5"])
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_deprecated_groups(["prompts.limit=5", "probe_set=toy", "eval_prompts=toy"])  # a key, or the new groups: no warning


@pytest.mark.unit
def test_the_demo_is_the_default_bundle_and_experiment_none_starts_from_nothing_of_it():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    def choices(overrides: list[str]) -> dict:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(config_name="train", overrides=[*overrides, "paths.output_dir=/tmp/unused"], return_hydra_config=True)
        GlobalHydra.instance().clear()
        picked = OmegaConf.to_container(cfg.hydra.runtime.choices)
        return {g: picked[g] for g in ("experiment", "model", "data", "prompts", "probe", "scorer")} | {
            "probes": sorted(cfg.callbacks.neuron_dynamics.probes or {})
        }

    demo = {"experiment": "demo", "model": "toy", "data": "toy", "prompts": "toy", "probe": "toy", "scorer": "toy"}
    assert choices([]) == demo | {"probes": ["toxicity", "workplace"]}
    own = {"experiment": "none", "model": "hf", "data": "jsonl", "prompts": "validation", "probe": "file", "scorer": "profanity_check"}
    assert choices(["experiment=none"]) == own | {"probes": []}  # one probe, the probe group's
    assert choices(["experiment=smollm2_toxicity"])["probe"] == "file"  # another experiment replaces the demo's bundle


@pytest.mark.unit
def test_choosing_your_own_model_or_data_without_an_experiment_drops_the_demo_bundle_with_a_warning():
    import warnings

    from lightning_dpo.cli import without_demo_bundle

    with pytest.warns(FutureWarning, match=r"model=hf data=jsonl without experiment=none: .* \(added for you in this release\)"):
        assert without_demo_bundle(["-m", "data.path=x", "model=hf", "data=jsonl", "--cfg", "job"]) == [
            "-m",
            "data.path=x",
            "experiment=none",  # beside the other overrides: Hydra's parser takes them in one run
            "model=hf",
            "data=jsonl",
            "--cfg",
            "job",
        ]
    with pytest.warns(FutureWarning):
        assert without_demo_bundle(["data=jsonl,toy2"]) == ["experiment=none", "data=jsonl,toy2"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for kept in (
            [],
            ["data=toy"],  # the demo's own options
            ["data=toy,jsonl"],  # a sweep that includes the demo: each job composes as it says
            ["model.name_or_path=x", "data.path=y"],  # keys, not group choices: the demo-assets guard names what is left
            ["experiment=smollm2_toxicity", "model=hf"],
            ["experiment=none", "model=hf"],
            ["~experiment", "data=jsonl"],
        ):
            assert without_demo_bundle(kept) == kept


def test_one_key_per_measuring_concept_reaches_the_callbacks_and_the_old_keys_warn():
    """probe_set.{max_prompt_tokens,prepend_bos,num_positions} and generation.{max_prompt_tokens,
    max_new_tokens}: the keys analyze and evaluate have, read by the callbacks in training."""
    from lightning_dpo.training.preflight import warn_deprecated_keys

    cfg = compose_train(["probe_set.num_positions=7", "probe_set.max_prompt_tokens=null", "generation.max_new_tokens=9"])
    dynamics, evaluation = cfg.callbacks.neuron_dynamics, cfg.callbacks.toxicity_eval
    assert (dynamics.num_positions, dynamics.max_prompt_tokens, dynamics.prepend_bos) == (7, None, False)
    assert (evaluation.max_new_tokens, evaluation.max_prompt_tokens) == (9, 32)
    paper = compose_train(["experiment=toxicity_gpt2_medium"]).callbacks.neuron_dynamics  # Yang et al. v1's probe set
    assert (paper.num_positions, paper.max_prompt_tokens, paper.prepend_bos) == (20, None, True)
    old = compose_train(["callbacks.neuron_dynamics.num_positions=5"])  # still sets it, for one release
    assert old.callbacks.neuron_dynamics.num_positions == 5
    with pytest.warns(FutureWarning, match=r"'callbacks.toxicity_eval.max_new_tokens=5' is deprecated: use generation.max_new_tokens=5"):
        warn_deprecated_keys(["callbacks.toxicity_eval.max_new_tokens=5", "generation.max_prompt_tokens=3"])
    with pytest.warns(FutureWarning, match=r"'optim.optimizer.lr=1e-5' is deprecated: use optim.lr=1e-5"):
        warn_deprecated_keys(["optim.optimizer.lr=1e-5", "optim.lr=2e-5"])  # optim.lr is checked, logged and swept
    commands = compose_command("analyze", ["dpo=x"]), compose_command("evaluate", ["model.name_or_path=x"])
    assert all("max_prompt_tokens" in c.generation and "max_new_tokens" in c.generation for c in commands)
    assert {"max_prompt_tokens", "prepend_bos", "num_positions"} <= set(commands[0].probe_set)


@pytest.mark.unit
def test_a_composition_resolves_in_place_with_the_signature_defaults():
    """What `--cfg job --resolve` and a run's .hydra/config.resolved.yaml do: every `${default:}`,
    a list default included, becomes the value."""
    from lightning_dpo.callbacks import NeuronDynamicsCallback
    from lightning_dpo.model import PreferenceLoss

    cfg = compose_train(["experiment=none"])
    OmegaConf.resolve(cfg)
    raw = OmegaConf.to_container(OmegaConf.load(CONF / "loss" / "dpo.yaml"))
    assert raw["beta"] == "${default:}" and cfg.loss.beta == inspect.signature(PreferenceLoss).parameters["beta"].default
    assert list(cfg.callbacks.neuron_dynamics.nulls) == list(inspect.signature(NeuronDynamicsCallback).parameters["nulls"].default)


@pytest.mark.unit
def test_eval_paper_sets_the_papers_perplexity_text_in_analyze_and_evaluate_alike():
    """analyze's own settings used to come after the eval group and kept `perplexity.text: run` under
    eval=paper; the shared settings (conf/shared/) now come before it in every command."""
    for command, overrides in (("analyze", ["dpo=x", "eval=paper"]), ("evaluate", ["model.name_or_path=x", "eval=paper"])):
        cfg = compose_command(command, overrides)
        assert (cfg.perplexity.text, cfg.f1.data, cfg.eval_prompts.source) == ("wikitext-2", None, "allenai/real-toxicity-prompts"), command
        assert cfg.generation.max_prompt_tokens == 32 and cfg.generation.max_new_tokens == 20
    assert compose_command("analyze", ["dpo=x"]).perplexity.text == "run"
