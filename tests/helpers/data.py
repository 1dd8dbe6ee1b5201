"""Small data for tests: a dependency-free tokenizer and a file of preference pairs."""

from __future__ import annotations

import json
from pathlib import Path


class CharTokenizer:
    """A dependency-free tokenizer for unit tests: one id per byte, EOS = 0 (also pad)."""

    eos_token_id = 0
    pad_token_id = 0
    bos_token_id = None
    add_bos_token = False
    eos_token = "<eos>"
    pad_token = "<eos>"

    def __call__(self, texts, add_special_tokens=True, **kwargs):
        if isinstance(texts, str):
            return {"input_ids": [1 + (b % 90) for b in texts.encode()]}
        return {"input_ids": [[1 + (b % 90) for b in t.encode()] for t in texts]}

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids if i)


def write_pairs(path: Path, n: int = 24, seed: int = 0) -> Path:
    import random

    rng = random.Random(seed)
    with open(path, "w") as handle:
        for i in range(n):
            handle.write(
                json.dumps(
                    {
                        "prompt": f"prompt {i} " + "ab"[rng.randint(0, 1)] * rng.randint(1, 5),
                        "chosen": " nice" + " ok" * rng.randint(0, 3),
                        "rejected": " bad" + " no" * rng.randint(0, 3),
                    }
                )
                + "\n"
            )
    return path
