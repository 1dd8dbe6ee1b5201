"""Sequence log-probs: completion masking, EOS inside completions, padding never scored."""

import pytest
import torch

from helpers.models import GPT2_TOKENIZER, build_tiny, tiny_gpt2_config, tiny_llama_config
from lightning_dpo.data.records import PreferenceRecord
from lightning_dpo.data.tokenize import collate_pairs, tokenize_pairs
from lightning_dpo.model.logprobs import sequence_logps

pytestmark = pytest.mark.unit  # the unit tier: `pytest -m unit`, under a minute


def brute_force_logp(model, prompt_ids, completion_ids):
    """Unpadded forward of one sequence; sum of log p(token) over the completion, token by token."""
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()
    total = 0.0
    for k, token in enumerate(completion_ids):
        position = len(prompt_ids) + k - 1  # the position that predicts this token
        row = logits[position]
        total += (row[token] - torch.logsumexp(row, 0)).item()
    return total


@pytest.mark.parametrize("config", [tiny_gpt2_config(), tiny_llama_config()], ids=["gpt2", "llama"])
def test_sequence_logps_equal_unpadded_brute_force(config, char_tokenizer):
    model = build_tiny(config).eval()
    records = [
        PreferenceRecord("a short prompt", " yes", " no way at all", 1),
        PreferenceRecord("p", " a much longer chosen completion", " r", 2),
        PreferenceRecord("a rather long prompt for padding", " c", " d", 3),
    ]
    pairs, _ = tokenize_pairs(char_tokenizer, records, 64, 64)
    batch = collate_pairs(
        [{"index": p.index, "prompt_ids": p.prompt_ids, "chosen_ids": p.chosen_ids, "rejected_ids": p.rejected_ids} for p in pairs],
        pad_token_id=0,
    )
    with torch.no_grad():
        logps, _ = sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    expected = [brute_force_logp(model, p.prompt_ids, p.chosen_ids) for p in pairs]
    expected += [brute_force_logp(model, p.prompt_ids, p.rejected_ids) for p in pairs]
    assert torch.allclose(logps.double(), torch.tensor(expected, dtype=torch.float64), atol=1e-4)


def test_padding_width_does_not_change_logps(char_tokenizer):
    model = build_tiny(tiny_gpt2_config()).eval()
    short = PreferenceRecord("hi", " there", " you", 1)
    long = PreferenceRecord("a much much longer prompt", " with a long completion", " x", 2)
    alone, _ = tokenize_pairs(char_tokenizer, [short], 64, 64)
    both, _ = tokenize_pairs(char_tokenizer, [short, long], 64, 64)

    def run(pairs, multiple=None):
        batch = collate_pairs([vars(p) for p in pairs], pad_token_id=0, pad_to_multiple_of=multiple)
        with torch.no_grad():
            return sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])[0]

    a = run(alone)
    b = run(both, multiple=16)
    assert torch.allclose(a[0], b[0], atol=1e-5) and torch.allclose(a[1], b[2], atol=1e-5)


def test_real_eos_inside_completion_is_scored_padding_is_not(char_tokenizer):
    model = build_tiny(tiny_gpt2_config()).eval()
    eos = char_tokenizer.eos_token_id
    prompt, completion = [5, 6, 7], [8, eos, 9, eos]  # an EOS in the middle and the appended one
    batch = collate_pairs([{"index": 0, "prompt_ids": prompt, "chosen_ids": completion, "rejected_ids": [10, eos]}], pad_token_id=eos)
    assert batch["completion_mask"][0].tolist() == [False] * 3 + [True] * 4
    assert batch["completion_mask"][1].tolist() == [False] * 3 + [True] * 2 + [False] * 2  # padding (id = EOS) not scored
    with torch.no_grad():
        logps, _ = sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    assert logps[0].item() == pytest.approx(brute_force_logp(model, prompt, completion), abs=1e-4)
    assert logps[1].item() == pytest.approx(brute_force_logp(model, prompt, [10, eos]), abs=1e-4)


def test_completion_tokens_are_the_completions_own_tokens_with_gpt2_bpe():
    """Where a BPE merge would cross the prompt/completion boundary ("Hello wor" + "ld"), the
    completion is tokenized on its own: its tokens are exactly tokenizer(completion) + EOS, and
    the masked positions hold exactly those tokens."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(GPT2_TOKENIZER))
    tok.pad_token = tok.eos_token
    prompt, completion = "Hello wor", "ld, says the program"
    joint = tok(prompt + completion)["input_ids"]
    separate = tok(prompt)["input_ids"] + tok(completion)["input_ids"]
    assert joint != separate  # the boundary really is merged by joint tokenization
    pairs, _ = tokenize_pairs(tok, [PreferenceRecord(prompt, completion, " other", 1)], 64, 64)
    batch = collate_pairs([vars(pairs[0])], pad_token_id=tok.pad_token_id)
    chosen_completion = batch["input_ids"][0][batch["completion_mask"][0]].tolist()
    assert chosen_completion == tok(completion)["input_ids"] + [tok.eos_token_id]
    assert tok.decode(batch["input_ids"][0][batch["attention_mask"][0].bool()]) == prompt + completion + tok.eos_token
    assert "Hello world" in tok.decode(joint) and len(joint) < len(separate) + 1


def test_truncation_policy(char_tokenizer):
    record = PreferenceRecord("0123456789", " abcdefghij", " k", 1)
    pairs, report = tokenize_pairs(char_tokenizer, [record], max_prompt_length=4, max_completion_length=5)
    assert pairs[0].prompt_ids == char_tokenizer("6789")["input_ids"]  # prompt keeps its last tokens
    assert pairs[0].chosen_ids == char_tokenizer(" abcd")["input_ids"]  # completion keeps its first, EOS dropped
    assert pairs[0].rejected_ids == char_tokenizer(" k")["input_ids"] + [0]  # short completion ends with EOS
    assert report.prompts_truncated == 1 and report.completions_truncated == 1
