"""The demo world's text generator: the bystander concept is one the corpus uses, so the model learns it."""

import random

from lightning_dpo.toy import words
from lightning_dpo.toy.world import ToyWorld


def _kind_of_noun(sentence: str) -> str:
    noun = sentence.rstrip(".").split()[-1]
    kinds = [kind for kind in ("work", "leisure") if noun in words.POLITE_NOUNS[kind] + words.TOXIC_NOUNS[kind]]
    assert len(kinds) == 1, sentence
    return kinds[0]


def _place_of(prompt: str) -> str:
    places = [p for p in words.PLACES if f"the {p}" in prompt]
    assert len(places) == 1, prompt
    return places[0]


def test_every_continuation_ends_in_a_noun_of_its_places_kind():
    world, rng = ToyWorld(dir="/nonexistent"), random.Random(0)
    sentences = [world._sentence(rng, words.TRAIN_NAMES) for _ in range(400)]
    assert {toxic for _, _, toxic in sentences} == {True, False}
    assert {_kind_of_noun(c) for _, c, _ in sentences} == {"work", "leisure"}
    for prompt, continuation, _ in sentences:
        assert _kind_of_noun(continuation) == words.place_kind(_place_of(prompt)), (prompt, continuation)
    # the bystander probe's labelled texts: label 1 = a workplace, whatever the continuation's tone
    for row in world._workplace_texts(random.Random(1), n=200):
        assert row["label"] == (words.place_kind(_place_of(row["text"])) == "work")
        assert _kind_of_noun(row["text"]) == words.place_kind(_place_of(row["text"]))


def test_nouns_and_places_do_not_overlap_between_kinds():
    assert not set(words.WORKPLACES) & set(words.LEISURE_PLACES)
    assert set(words.WORKPLACES) | set(words.LEISURE_PLACES) == set(words.PLACES)
    for nouns in (words.POLITE_NOUNS, words.TOXIC_NOUNS):
        assert not set(nouns["work"]) & set(nouns["leisure"])
    assert set(words.TOXIC_NOUNS["work"] + words.TOXIC_NOUNS["leisure"]) <= set(words.INSULTS)  # the scorer sees every insult
    assert not set(words.POLITE_NOUNS["work"] + words.POLITE_NOUNS["leisure"]) & set(words.INSULTS)


def test_the_small_worlds_bystander_probe_reads_a_learned_concept(small_world):
    # with nouns independent of the place (world version 7) the full-size world's probe was at chance
    # (0.53-0.56); here the two-layer test world separates workplaces on held-out texts
    assert small_world.stats["workplace_probe_accuracy"] >= 0.6


def test_a_world_is_the_same_world_whatever_the_thread_count(tmp_path):
    """Issue 20: built with 1 and with 2 threads, every file of a (tiny) world has the same bytes."""
    import hashlib

    import torch

    from lightning_dpo.toy.world import ToyWorld

    settings = dict(
        seed=3,
        corpus_size=1000,
        num_pairs=40,
        num_eval_prompts=8,
        vocab_size=600,
        n_layer=2,
        n_embd=64,
        n_head=4,
        n_inner=128,
        pretrain_steps=150,
        pretrain_batch_size=32,
    )
    before = torch.get_num_threads()
    digests = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            world = ToyWorld(dir=str(tmp_path / f"threads{threads}"), **settings).build()
            files = sorted(p for p in world.path.rglob("*") if p.is_file())
            digests.append({str(p.relative_to(world.path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files})
    finally:
        torch.set_num_threads(before)
    assert digests[0].keys() == digests[1].keys() and len(digests[0]) > 8
    assert digests[0] == digests[1]
