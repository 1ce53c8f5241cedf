"""Item-token embeddings of the tiny model taken from a SASRec trained on the training split.

LLaRA (Liao et al., SIGIR 2024) feeds a conventional recommender's item representations to its LLM. The
tiny model has one token per item name, so the same idea is a copy: SASRec (`baselines.models.SASRec` at
the baselines' size, 64) is trained on the *training* records only (histories -> true item, cross-entropy
over all items, a fixed number of epochs, no validation or test record seen); its item vectors are mapped
to the LM's hidden size by a seeded random orthogonal map (dot products between items are kept) and
rescaled so that the copied rows have the LM's own initialisation scale (`initializer_range`): what comes
from SASRec is the geometry of the items, not a scale. The row of each item token in the LM's input
embedding and in its output layer (the same tensor when tied) is set to it. Items that never occur in a
training record keep the LM's random rows. Where names are ordinary multi-token text (tiny-bpe), each piece of
a name gets the mean vector of the names it occurs in (`name_token_rows`). Used by `sft.py --item_embeddings
sasrec`; the SFT loss, prompts and candidates are unchanged.

    python sft.py --model_name tiny --dataset lastfm --full_finetune True --item_embeddings sasrec ...
"""

from __future__ import annotations

import logging
from typing import Sequence

import torch
import torch.nn.functional as F

import data_interface as di
from baselines.models import SASRec
from baselines.train import BATCH_SIZE, EMBEDDING_DIM, LEARNING_RATE, MAX_HISTORY, encode, item_vocabulary

logger = logging.getLogger("sdpo.item_init")

ITEM_EMBEDDINGS = ("random", "sasrec")  # the values of `sft.py --item_embeddings`
SASREC_EPOCHS = 12  # fixed, no model selection: the best validation epoch of the committed baselines run


def sasrec_item_vectors(train: Sequence[di.Record], dim: int = EMBEDDING_DIM, seed: int = 0,
                        epochs: int = SASREC_EPOCHS) -> dict[str, torch.Tensor]:
    """Train SASRec on `train` only and return {item name: its item embedding, FloatTensor [dim]} for every
    item named in a training record (history, candidates or target)."""
    vocabulary = item_vocabulary([train])
    split = encode(train, vocabulary, MAX_HISTORY)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SASRec(len(vocabulary), dim=dim, max_history=MAX_HISTORY)
        optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
        shuffle = torch.Generator().manual_seed(seed)
        model.train()
        for epoch in range(1, epochs + 1):
            total = 0.0
            for batch in torch.randperm(len(train), generator=shuffle).split(BATCH_SIZE):
                loss = F.cross_entropy(model(split.histories[batch]), split.targets[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += loss.item() * len(batch)
            logger.info("SASRec for item embeddings, epoch %d/%d: train loss %.4f", epoch, epochs, total / len(train))
    weight = model.item_embedding.weight.detach()
    return {name: weight[index].clone() for name, index in vocabulary.items()}


def orthogonal_map(source_dim: int, target_dim: int, seed: int = 0) -> torch.Tensor:
    """A seeded random FloatTensor [source_dim, target_dim] with orthonormal rows (x @ it keeps dot products)."""
    if source_dim > target_dim:
        raise ValueError(f"cannot map {source_dim} dimensions into {target_dim} keeping dot products")
    gaussian = torch.randn(target_dim, source_dim, generator=torch.Generator().manual_seed(seed))
    return torch.linalg.qr(gaussian).Q.T.contiguous()


def _single_token_ids(tokenizer, names: Sequence[str]) -> list[int | None]:
    """The token id of each name that is one token of the tokenizer, else None."""
    ids = [tokenizer.convert_tokens_to_ids(name) for name in names]
    return [None if token_id == tokenizer.unk_token_id else token_id for token_id in ids]


def item_token_rows(tokenizer, vectors: dict[str, torch.Tensor]) -> dict[int, torch.Tensor]:
    """{token id: vector} for a tokenizer with one token per item name (tiny); a name that is not one token
    is an error."""
    names = sorted(vectors)
    ids = _single_token_ids(tokenizer, names)
    missing = [name for name, token_id in zip(names, ids) if token_id is None]
    if missing:
        raise ValueError(f"{len(missing)} item names are not single tokens of the tokenizer (e.g. {missing[0]!r})")
    return {token_id: vectors[name] for name, token_id in zip(names, ids)}


def name_token_rows(tokenizer, vectors: dict[str, torch.Tensor]) -> dict[int, torch.Tensor]:
    """{token id: the mean vector of the item names whose tokens include it} for a tokenizer that writes names
    as several ordinary tokens (tiny-bpe): a piece found in one name only gets that item's vector, a piece
    shared by many names (a space, "The") their mean."""
    sums: dict[int, torch.Tensor] = {}
    counts: dict[int, int] = {}
    for name in sorted(vectors):
        for token_id in set(tokenizer.encode(name, add_special_tokens=False)):
            sums[token_id] = sums.get(token_id, 0) + vectors[name]
            counts[token_id] = counts.get(token_id, 0) + 1
    return {token_id: sums[token_id] / counts[token_id] for token_id in sorted(sums)}


def copy_rows(model, rows: dict[int, torch.Tensor], scale: float, seed: int = 0) -> int:
    """Set the input-embedding and output-layer rows of each token id in `rows` to its vector (mapped by
    `orthogonal_map` when it is shorter than the hidden size), all rescaled by one factor so that their
    standard deviation is `scale`; returns the number of rows set."""
    ids = sorted(rows)
    vectors = torch.stack([rows[token_id] for token_id in ids])
    hidden = model.get_input_embeddings().weight.shape[1]
    if vectors.shape[1] != hidden:
        vectors = vectors @ orthogonal_map(vectors.shape[1], hidden, seed)
    vectors = vectors * (scale / vectors.std())
    index = torch.tensor(ids)
    with torch.no_grad():
        model.get_input_embeddings().weight[index] = vectors
        output = model.get_output_embeddings()
        if output is not None and output.weight is not model.get_input_embeddings().weight:
            output.weight[index] = vectors
    return len(ids)


def copy_item_vectors(model, tokenizer, vectors: dict[str, torch.Tensor], scale: float, seed: int = 0) -> int:
    """`copy_rows` of each item token's vector (the tiny tokenizer adds every item name as one token)."""
    return copy_rows(model, item_token_rows(tokenizer, vectors), scale, seed)


def has_item_tokens(tokenizer, names: Sequence[str]) -> bool:
    """Whether every name is one token of the tokenizer (tiny) rather than several ordinary ones (tiny-bpe)."""
    return None not in _single_token_ids(tokenizer, names)


def init_item_embeddings(model, tokenizer, train: Sequence[di.Record], seed: int = 0) -> int:
    """The rows of a SASRec trained on `train` (`item_token_rows` where names are single tokens, else
    `name_token_rows`), copied by `copy_rows`; returns the number of rows set."""
    vectors = sasrec_item_vectors(train, seed=seed)
    single = has_item_tokens(tokenizer, sorted(vectors))
    rows = item_token_rows(tokenizer, vectors) if single else name_token_rows(tokenizer, vectors)
    count = copy_rows(model, rows, model.config.initializer_range, seed)
    logger.info("item embeddings: %d %s rows set from a SASRec trained on %d training records",
                count, "item-token" if single else "name-piece", len(train))
    return count
