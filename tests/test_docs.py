"""The reference in docs/ names only what exists: config keys and group options, loss types, output
files, columns, tensors and metric names of the public contract; and the README links every page."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from helpers.configs import compose_command, compose_train
from lightning_dpo.model.losses import LOSSES

pytestmark = pytest.mark.unit  # the unit tier: `pytest -m unit`, under a minute

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
GROUPS = (
    "model",
    "data",
    "loss",
    "optim",
    "trainer",
    "callbacks",
    "prompts",
    "probe_set",
    "eval_prompts",
    "probe",
    "scorer",
    "assets",
    "world",
)
# compositions that between them hold every documented key (a key lives in the option that defines it)
VARIANTS = [
    [],
    ["experiment=none", "model=hf", "data=jsonl", "data.path=x.jsonl", "probe=train", "probe.data=x.jsonl"],
    ["probe=embed_diff"],
    ["experiment=smollm2_toxicity"],
    ["trainer=fsdp"],
    ["optim=rmsprop"],
    ["probe=file", "probe.path=x"],
    ["scorer=perspective"],
]


def _backticked(text: str) -> set[str]:
    return set(re.findall(r"`([^`\s]+)`", text))


def _documented_keys(text: str) -> set[str]:
    keys = set()
    for token in _backticked(text):
        token = token.split("=", 1)[0]
        if re.search(r"\.(safetensors|jsonl?|csv|md|png|ya?ml|txt|pt|npy|gguf|ckpt|html|py)$", token):
            continue  # a file name, not a key
        if re.fullmatch(rf"({'|'.join(GROUPS)})\.[A-Za-z_][\w.]*", token):
            keys.add(token)
    return keys


@pytest.fixture(scope="module")
def configs():
    """Train's compositions first (the first is the demo's), then the commands' that share its groups."""
    commands = [compose_command("analyze", ["dpo=x"]), compose_command("evaluate", ["model.name_or_path=x"])]
    return [OmegaConf.to_container(c, resolve=False) for c in [*(compose_train(v) for v in VARIANTS), *commands]]


def _has(config: dict, dotted: str) -> bool:
    node = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


@pytest.mark.parametrize("page", ["configuration.md", "dynamics.md", "data.md", "evaluation.md", "scale.md", "sweeps.md", "presets.md"])
def test_every_config_key_a_page_names_exists(page, configs):
    keys = _documented_keys((DOCS / page).read_text())
    missing = sorted(k for k in keys if not any(_has(c, k) for c in configs))
    assert not missing, f"docs/{page} names keys no composed config has: {missing}"


def test_configuration_lists_the_real_group_options_and_the_callbacks_defaults(configs):
    text = (DOCS / "configuration.md").read_text()
    rows = [line.split("|") for line in text.splitlines() if re.match(r"\| `\w+` \|", line)]
    groups = {}
    for row in rows:
        name = row[1].strip().strip("`")
        if (ROOT / "conf" / name).is_dir():
            groups[name] = re.findall(r"`(\w+)`", row[2])
    assert {*GROUPS, "experiment"} <= set(groups)  # every group the key check reads, and the presets
    for name, options in groups.items():
        real = {p.stem for p in (ROOT / "conf" / name).glob("*.yaml")}
        assert set(options) - {"null"} <= real, (name, set(options) - real)
        assert real <= set(options) | {
            "default",
            "model_checkpoint",
            "neuron_dynamics",
            "toxicity_eval",
            "stop_checkpoint",
            "progress_bar",
            "early_stopping",
        }, (name, real - set(options))
    # the callback table's defaults are the composed ones (experiment=none), and "(the demo: x)" the demo's
    base, demo = (compose_train(v).callbacks.neuron_dynamics for v in (["experiment=none"], []))
    checked = set()
    for line in text.splitlines():
        match = re.match(r"\| `callbacks\.neuron_dynamics\.(\w+)` \| `?([^|`(]+?)`?(?: \(the demo: (\w+)\))? \|", line)
        if match and match.group(1) in ("max_prompts", "every_n_steps", "top_n", "null_directions", "buckets", "batch_size"):
            assert str(base[match.group(1)]).lower().replace("none", "null") == match.group(2).strip(), line
            assert str(demo[match.group(1)]).lower().replace("none", "null") == (match.group(3) or match.group(2).strip()), line
            checked.add(match.group(1))
        shared = re.match(r"\| `((?:probe_set|generation)\.\w+)` \| (\w+) \|", line)
        if shared:  # one key per concept: the documented default is the composed one, and the callbacks read it
            value = OmegaConf.select(OmegaConf.create(configs[0]), shared.group(1))
            assert str(value).lower() == shared.group(2), line
            checked.add(shared.group(1))
    assert checked == {
        "max_prompts",
        "every_n_steps",
        "top_n",
        "null_directions",
        "buckets",
        "probe_set.max_prompt_tokens",
        "probe_set.prepend_bos",
        "probe_set.num_positions",
        "generation.max_prompt_tokens",
        "generation.max_new_tokens",
    }


def test_the_loss_table_is_the_registry():
    text = (DOCS / "losses.md").read_text()
    documented = set()
    for line in text.splitlines():
        if line.startswith("| `"):
            documented |= set(re.findall(r"`(\w+)`", line.split("|")[1]))
    builtin = {name for name, spec in LOSSES.items() if spec.fn.__module__ == "lightning_dpo.model.losses"}  # not the tests' own
    assert documented == builtin, documented ^ builtin


def test_outputs_name_every_file_column_tensor_and_metric_of_the_contract():
    text = (DOCS / "outputs.md").read_text()
    contract = json.loads((ROOT / "tests" / "assets" / "contract.json").read_text())
    for path in contract["csv"]:
        if path != "metrics.csv":  # its columns are the metric names, checked below
            line = next(line for line in text.splitlines() if f"`{path}`" in line)
            assert all(column in line for column in contract["csv"][path]), path
    for path in contract["json"]:
        assert path.split("/")[-1] in text, path
    tensors = {name.split(".")[0] for spec in contract["safetensors"].values() for name in spec["tensors"]}
    assert all(f"`{t}" in text or t in text for t in tensors), tensors
    for path in contract["files"]:
        name = path.split("/")[-1]
        forms = {name, re.sub(r"\d{7}", "*", name), re.sub(r"\d{7}", "<step:07d>", name)}
        folder = path.split("/")[0] + "/" if "/" in path else None  # hf_model/, .hydra/: the folder is documented as a whole
        assert any(form in text for form in forms) or (folder is not None and f"`{folder}" in text), path
    for metric in contract["csv"]["metrics.csv"]:
        if metric in ("step", "epoch"):
            continue
        last = metric.rsplit("/", 1)[-1]
        assert last in text, metric


def test_the_readme_links_every_docs_page_and_every_link_resolves():
    readme = (ROOT / "README.md").read_text()
    linked = set(re.findall(r"\]\((docs/[\w/.-]+\.(?:md|png))", readme))
    pages = {f"docs/{p.name}" for p in DOCS.glob("*.md")}
    assert pages <= linked, pages - linked
    for page in [ROOT / "README.md", *DOCS.glob("*.md")]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links to {target}, which does not exist"


def test_the_presets_page_names_real_experiments():
    text = (DOCS / "presets.md").read_text() + (DOCS / "configuration.md").read_text()
    for name in re.findall(r"experiment=(\w+)", text):
        assert (ROOT / "conf" / "experiment" / f"{name}.yaml").is_file(), name


def test_the_readme_extension_examples_work(tmp_path, monkeypatch):
    """The README's "Extend it" block, as a user's module: the scorer scores, the probe source gives a
    unit direction of the model's width, and the loss is found by its dotted path."""
    import sys

    from transformers import GPT2Config, GPT2LMHeadModel

    from lightning_dpo.model.losses import lookup

    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Extend it", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    (tmp_path / "my_ext.py").write_text(block)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("my_ext", None)
    import my_ext

    assert my_ext.ShoutScorer().score(["HELLO THERE", "hello"]) == [1.0, 0.0]
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32))
    probe = my_ext.FirstAxisProbe().direction(model, None)
    assert probe.direction.shape == (16,) and probe.direction[0] == 1
    assert lookup("my_ext.margin_squared").fn is my_ext.margin_squared
