"""item_init.py: the tiny model's item-token rows start from a SASRec trained on the training split only."""

from __future__ import annotations

import pytest
import torch

import item_init
import models
import runtime
import sft


@pytest.fixture(scope="module")
def synthetic_data(synthetic_dir):
    return runtime.load_stage_data(("train", "val", "test"), str(synthetic_dir))


def test_orthogonal_map_keeps_dot_products_and_is_seeded():
    vectors = torch.randn(5, 8)
    mapped = vectors @ item_init.orthogonal_map(8, 32, seed=3)
    torch.testing.assert_close(mapped @ mapped.T, vectors @ vectors.T, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(item_init.orthogonal_map(8, 32, seed=3), item_init.orthogonal_map(8, 32, seed=3))
    assert not torch.allclose(item_init.orthogonal_map(8, 32, seed=3), item_init.orthogonal_map(8, 32, seed=4))


def test_sasrec_vectors_come_from_the_training_records_only_and_are_deterministic(synthetic_data):
    train = synthetic_data.train[:40]
    named_in_train = {name for r in train for name in (*r.history, *r.candidates, r.target)}
    only_in_test = {name for r in synthetic_data.test for name in (*r.history, *r.candidates)} - named_in_train
    first = item_init.sasrec_item_vectors(train, dim=8, seed=0, epochs=1)
    assert set(first) == named_in_train
    assert only_in_test and not only_in_test & set(first)
    second = item_init.sasrec_item_vectors(train, dim=8, seed=0, epochs=1)
    for name in first:
        torch.testing.assert_close(first[name], second[name])
    # Training moved the vectors away from SASRec's initialisation (another seed, other vectors).
    other = item_init.sasrec_item_vectors(train, dim=8, seed=1, epochs=1)
    assert not torch.allclose(first[train[0].target], other[train[0].target])


@pytest.mark.parametrize("tied", [True, False])
def test_item_token_rows_are_the_mapped_sasrec_vectors_and_other_rows_are_kept(synthetic_data, tied):
    base = runtime.base_model_path("tiny", None, synthetic_data, seed=0)
    tokenizer = models.load_tokenizer(base)
    model = models.load_base_model(base, load_in_4bit=False)
    if tied:
        models.tie_word_embeddings(model)
    before_input = model.get_input_embeddings().weight.detach().clone()
    before_output = model.get_output_embeddings().weight.detach().clone()
    names = sorted({name for r in synthetic_data.train for name in (*r.history, *r.candidates)})[:7]
    vectors = {name: torch.randn(8, generator=torch.Generator().manual_seed(i)) for i, name in enumerate(names)}

    count = item_init.copy_item_vectors(model, tokenizer, vectors, scale=0.02, seed=0)

    ids = [tokenizer.convert_tokens_to_ids(name) for name in names]
    hidden = model.config.hidden_size
    expected = torch.stack([vectors[name] for name in names]) @ item_init.orthogonal_map(8, hidden, seed=0)
    expected = expected * (0.02 / expected.std())
    assert count == len(names)
    torch.testing.assert_close(model.get_input_embeddings().weight[ids], expected)
    torch.testing.assert_close(model.get_output_embeddings().weight[ids], expected)
    assert (model.get_output_embeddings().weight is model.get_input_embeddings().weight) == tied
    untouched = torch.ones(len(tokenizer), dtype=torch.bool)
    untouched[ids] = False
    torch.testing.assert_close(model.get_input_embeddings().weight[untouched], before_input[untouched])
    if not tied:
        torch.testing.assert_close(model.get_output_embeddings().weight[untouched], before_output[untouched])


def test_a_name_that_is_not_one_token_is_refused(synthetic_data):
    base = runtime.base_model_path("tiny", None, synthetic_data, seed=0)
    model, tokenizer = models.load_base_model(base, load_in_4bit=False), models.load_tokenizer(base)
    with pytest.raises(ValueError, match="not single tokens"):
        item_init.copy_item_vectors(model, tokenizer, {"no such item name": torch.ones(4)}, scale=0.02)


def test_sft_flags_are_checked_before_a_model_loads(synthetic_dir, tmp_path):
    with pytest.raises(runtime.UsageError, match="random or sasrec"):
        sft.train(dataset=str(synthetic_dir), output_dir=str(tmp_path), full_finetune=True, item_embeddings="gru")
    with pytest.raises(runtime.UsageError, match="full_finetune"):
        sft.train(dataset=str(synthetic_dir), output_dir=str(tmp_path), item_embeddings="sasrec")


def test_sft_starts_from_vectors_of_the_training_split_and_saves_a_tied_model(synthetic_dir, synthetic_data,
                                                                              tmp_path, monkeypatch):
    seen, real_vectors = [], item_init.sasrec_item_vectors

    def fake_vectors(train, dim=64, seed=0, epochs=1):
        seen.append((list(train), seed))
        return real_vectors(train[:20], dim=8, seed=seed, epochs=1)

    monkeypatch.setattr(item_init, "sasrec_item_vectors", fake_vectors)
    final = sft.train(model_name="tiny", dataset=str(synthetic_dir), output_dir=str(tmp_path / "sft"),
                      full_finetune=True, tie_word_embeddings=True, item_embeddings="sasrec", seed=5,
                      batch_size=4, max_steps=1, eval_step=1, max_eval_samples=4)
    assert seen == [(synthetic_data.train, 5)]  # every training record, nothing from val or test
    model = models.load_base_model(final, load_in_4bit=False)
    assert model.config.tie_word_embeddings
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight


def test_multi_token_names_give_each_piece_the_mean_vector_of_the_names_it_occurs_in(synthetic_data):
    base = runtime.base_model_path("tiny-bpe", None, synthetic_data, seed=0)
    tokenizer = models.load_tokenizer(base)
    names = sorted({name for r in synthetic_data.train for name in (*r.history, *r.candidates)})
    assert not item_init.has_item_tokens(tokenizer, names)
    vectors = {name: torch.randn(8, generator=torch.Generator().manual_seed(i)) for i, name in enumerate(names)}
    pieces = {name: set(tokenizer.encode(name, add_special_tokens=False)) for name in names}
    assert any(len(p) > 1 for p in pieces.values())

    rows = item_init.name_token_rows(tokenizer, vectors)

    assert set(rows) == set().union(*pieces.values())
    for token_id, row in rows.items():
        holders = [name for name in names if token_id in pieces[name]]
        torch.testing.assert_close(row, torch.stack([vectors[name] for name in holders]).mean(0))


def test_sasrec_init_of_a_multi_token_model_sets_the_rows_of_name_pieces_only(synthetic_data, monkeypatch):
    base = runtime.base_model_path("tiny-bpe", None, synthetic_data, seed=0)
    tokenizer = models.load_tokenizer(base)
    model = models.load_base_model(base, load_in_4bit=False)
    models.tie_word_embeddings(model)
    before = model.get_input_embeddings().weight.detach().clone()
    monkeypatch.setattr(item_init, "sasrec_item_vectors",
                        lambda train, seed=0: {name: torch.randn(8) for r in train for name in (*r.history, r.target)})

    count = item_init.init_item_embeddings(model, tokenizer, synthetic_data.train[:30], seed=0)

    names = {name for r in synthetic_data.train[:30] for name in (*r.history, r.target)}
    pieces = set().union(*(tokenizer.encode(name, add_special_tokens=False) for name in names))
    changed = (model.get_input_embeddings().weight != before).any(dim=1).nonzero().flatten().tolist()
    assert count == len(pieces) and set(changed) == pieces
    quote = tokenizer.convert_tokens_to_ids('"')
    assert quote not in pieces and tokenizer.eos_token_id not in pieces
    assert model.get_input_embeddings().weight[changed].std().item() == pytest.approx(model.config.initializer_range,
                                                                                     rel=1e-3)
