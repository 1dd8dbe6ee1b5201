"""The public contract of a run directory, as data: file names, CSV columns, safetensors keys (with
dtype and shape), JSON keys and metric names. `tests/assets/contract.json` holds the manifest of a
short demo-world run taken before the restructure; `tests/test_contract.py` checks that a run made
now still has every one of them (new files, columns and keys may be added: the contract is
extended compatibly, never broken).

Regenerate (only when the contract is changed on purpose, and say so in the README):
    python tests/helpers/contract.py <run dir> > tests/assets/contract.json
"""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path
from typing import Any

# per-attempt folders carry a time; wandb and the lock are not part of the contract
_SKIP = re.compile(r"(^|/)(wandb|\.lightning_dpo\.lock|\.[^/]*\.tmp)(/|$)")
_ATTEMPT = re.compile(r"\.hydra/attempts/(\d{3})-[0-9-]+")


def _name(path: Path, root: Path) -> str:
    return _ATTEMPT.sub(r".hydra/attempts/\1-<time>", path.relative_to(root).as_posix())


def manifest(run_dir: str | Path) -> dict[str, Any]:
    from safetensors import safe_open

    root = Path(run_dir)
    out: dict[str, Any] = {"files": [], "csv": {}, "safetensors": {}, "json": {}}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        name = _name(path, root)
        if _SKIP.search(name):
            continue
        out["files"].append(name)
        if path.suffix == ".csv":
            with open(path, newline="", encoding="utf-8") as handle:
                out["csv"][name] = next(csv.reader(handle), [])
        elif path.suffix == ".safetensors" and "hf_model" not in name:
            with safe_open(str(path), framework="pt") as handle:
                keys = {}
                for key in handle.keys():
                    tensor = handle.get_slice(key)
                    keys[key] = [str(tensor.get_dtype()), list(tensor.get_shape())]
                out["safetensors"][name] = {"tensors": keys, "metadata": sorted((handle.metadata() or {}).keys())}
        elif (path.suffix == ".json" and "hf_model" not in name) or path.name == "lightning_dpo.json":
            value = json.loads(path.read_text())
            out["json"][name] = sorted(value) if isinstance(value, dict) else type(value).__name__
    return out


if __name__ == "__main__":
    print(json.dumps(manifest(sys.argv[1]), indent=1, sort_keys=True))
