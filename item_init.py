"""Item-token embeddings of the tiny model taken from a SASRec trained on the training split.

LLaRA (Liao et al., SIGIR 2024) feeds a conventional recommender's item representations to its LLM. The
tiny model has one token per item name, so the same idea is a copy: SASRec (`baselines.models.SASRec` at
the baselines' size, 64) is trained on the *training* records only (histories -> true item, cross-entropy
over all items, a fixed number of epochs, no validation or test record seen); its item vectors are mapped
to the LM's hidden size by a seeded random orthogonal map (dot products between items are kept) and
rescaled so that the copied rows have the LM's own initialisation scale (`initializer_range`): what comes
from SASRec is the geometry of the items, not a scale. The row of each item token in the LM's input
embedding and in its output layer (the same tensor when tied) is set to it. Items that never occur in a
training record keep the LM's random rows. Used by `sft.py --item_embeddings sasrec`; the SFT loss, prompts and
candidates are unchanged.

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


def copy_item_vectors(model, tokenizer, vectors: dict[str, torch.Tensor], scale: float, seed: int = 0) -> int:
    """Set the input-embedding and output-layer rows of each item token named in `vectors` to that vector
    (mapped by `orthogonal_map` when it is shorter than the hidden size), all rescaled by one factor so
    that their standard deviation is `scale`; returns the number of rows set.

    An item token is the single token the tokenizer makes of the name (the tiny tokenizer adds every item
    name as one token); a name that is not one token is an error.
    """
    names = sorted(vectors)
    ids = [tokenizer.convert_tokens_to_ids(name) for name in names]
    missing = [name for name, token_id in zip(names, ids) if token_id is None or token_id == tokenizer.unk_token_id]
    if missing:
        raise ValueError(f"{len(missing)} item names are not single tokens of the tokenizer (e.g. {missing[0]!r})")
    rows = torch.stack([vectors[name] for name in names])
    hidden = model.get_input_embeddings().weight.shape[1]
    if rows.shape[1] != hidden:
        rows = rows @ orthogonal_map(rows.shape[1], hidden, seed)
    rows = rows * (scale / rows.std())
    index = torch.tensor(ids)
    with torch.no_grad():
        model.get_input_embeddings().weight[index] = rows
        output = model.get_output_embeddings()
        if output is not None and output.weight is not model.get_input_embeddings().weight:
            output.weight[index] = rows
    return len(ids)


def init_item_embeddings(model, tokenizer, train: Sequence[di.Record], seed: int = 0) -> int:
    """`copy_item_vectors` of a SASRec trained on `train`; returns the number of rows set."""
    vectors = sasrec_item_vectors(train, seed=seed)
    count = copy_item_vectors(model, tokenizer, vectors, model.config.initializer_range, seed)
    logger.info("item embeddings: %d item-token rows set from a SASRec trained on %d training records",
                count, len(train))
    return count
