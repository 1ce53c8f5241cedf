"""GRU4Rec, Caser and SASRec, each as its paper describes it, in plain torch.

Every model maps a batch of histories to one score per item:

    histories: LongTensor [B, L], item indices 1..num_items, left-padded with 0 (the most recent item
               is always at position L - 1)
    returns:   FloatTensor [B, num_items + 1], next-item scores (index 0 is padding, never a target)

What differs from the papers, for all three: they are trained with cross-entropy over all items on the
last position (see `baselines/train.py`), and none has a user embedding: records carry no user id, and
test users never appear in training, so a user embedding would be untrained at test time.
"""

from __future__ import annotations

import torch
from torch import nn


def init_embedding(embedding: nn.Embedding, init) -> None:
    """Initialise an item embedding with `init`, keeping the padding row at zero."""
    init(embedding.weight)
    with torch.no_grad():
        embedding.weight[embedding.padding_idx].zero_()


class GRU4Rec(nn.Module):
    """Hidasi et al., ICLR 2016: item embedding -> GRU over the session -> final hidden state -> a
    feed-forward output layer scoring every item."""

    def __init__(self, num_items: int, dim: int = 64, max_history: int = 10, dropout: float = 0.25,
                 num_layers: int = 1):
        super().__init__()
        self.item_embedding = nn.Embedding(num_items + 1, dim, padding_idx=0)
        self.dropout = nn.Dropout(dropout)
        self.gru = nn.GRU(dim, dim, num_layers=num_layers, batch_first=True)
        self.output = nn.Linear(dim, num_items + 1)
        init_embedding(self.item_embedding, nn.init.xavier_uniform_)  # as the authors' code

    def forward(self, histories: torch.Tensor) -> torch.Tensor:
        lengths = (histories > 0).sum(1)
        # Right-align so that packing skips the padding and the GRU state starts at the first item.
        width = histories.size(1)
        shift = (torch.arange(width)[None, :] + (width - lengths)[:, None]) % width
        items = self.dropout(self.item_embedding(histories.gather(1, shift)))
        packed = nn.utils.rnn.pack_padded_sequence(items, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, hidden = self.gru(packed)  # hidden: [num_layers, B, dim]
        return self.output(hidden[-1])


class Caser(nn.Module):
    """Tang & Wang, WSDM 2018: the L x d embedding "image" of the last L items goes through horizontal
    filters (heights 1..L, max-pooled over time, ReLU) and vertical filters (one per latent dimension,
    linear); both are concatenated, dropped out and mapped to z by a ReLU layer; items are scored by
    an output layer on z (the paper's user embedding is left out, see the module docstring)."""

    def __init__(self, num_items: int, dim: int = 64, max_history: int = 10, dropout: float = 0.5,
                 num_horizontal: int = 16, num_vertical: int = 4):
        super().__init__()
        self.item_embedding = nn.Embedding(num_items + 1, dim, padding_idx=0)
        self.vertical = nn.Conv2d(1, num_vertical, (max_history, 1))
        self.horizontal = nn.ModuleList(nn.Conv2d(1, num_horizontal, (h, dim)) for h in range(1, max_history + 1))
        self.dropout = nn.Dropout(dropout)
        self.hidden = nn.Linear(num_vertical * dim + num_horizontal * max_history, dim)
        self.output = nn.Linear(dim, num_items + 1)
        init_embedding(self.item_embedding, lambda weight: nn.init.normal_(weight, std=1 / dim))  # as the authors' code

    def forward(self, histories: torch.Tensor) -> torch.Tensor:
        image = self.item_embedding(histories).unsqueeze(1)  # [B, 1, L, dim]
        vertical = self.vertical(image).flatten(1)  # [B, num_vertical * dim]
        horizontal = [torch.relu(conv(image).squeeze(3)).amax(dim=2) for conv in self.horizontal]  # L x [B, n_h]
        z = torch.relu(self.hidden(self.dropout(torch.cat([vertical, *horizontal], dim=1))))
        return self.output(z)


class SASRecBlock(nn.Module):
    """One self-attention block of SASRec: g(x) = x + Dropout(g(LayerNorm(x))) for the single-head
    causal self-attention and for the point-wise two-layer ReLU feed-forward network."""

    def __init__(self, dim: int, dropout: float):
        super().__init__()
        self.attention_norm = nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, num_heads=1, dropout=dropout, batch_first=True)
        self.feed_forward_norm = nn.LayerNorm(dim)
        self.feed_forward = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(dim, dim))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, blocked: torch.Tensor) -> torch.Tensor:
        """x: [B, L, dim]; blocked: BoolTensor [B, L, L], True where a query may not attend to a key."""
        h = self.attention_norm(x)
        x = x + self.dropout(self.attention(h, h, h, attn_mask=blocked, need_weights=False)[0])
        return x + self.dropout(self.feed_forward(self.feed_forward_norm(x)))


class SASRec(nn.Module):
    """Kang & McAuley, ICDM 2018: item embedding (scaled by sqrt(d)) + learned position embedding ->
    2 causal self-attention blocks -> LayerNorm; the output at the last position is scored against the
    shared item embedding."""

    def __init__(self, num_items: int, dim: int = 64, max_history: int = 10, dropout: float = 0.2,
                 num_blocks: int = 2):
        super().__init__()
        self.item_embedding = nn.Embedding(num_items + 1, dim, padding_idx=0)
        self.position_embedding = nn.Embedding(max_history, dim)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(SASRecBlock(dim, dropout) for _ in range(num_blocks))
        self.final_norm = nn.LayerNorm(dim)
        # As the common PyTorch port (pmixer/SASRec.pytorch); with N(0, 1) the first logits would be ~N(0, d).
        init_embedding(self.item_embedding, nn.init.xavier_normal_)
        nn.init.xavier_normal_(self.position_embedding.weight)

    def forward(self, histories: torch.Tensor) -> torch.Tensor:
        batch, width = histories.shape
        real = (histories > 0).unsqueeze(-1)  # [B, L, 1]
        positions = torch.arange(width).expand(batch, width)
        x = self.item_embedding(histories) * self.item_embedding.embedding_dim ** 0.5 + self.position_embedding(positions)
        x = self.dropout(x) * real  # padding stays a zero vector, as in the paper's code
        causal = torch.ones(width, width, dtype=torch.bool).triu(1)
        blocked = causal | ~real.transpose(1, 2)  # no future items, no padding keys
        # Every query may see itself, so a padding query is not left with nothing to attend to.
        blocked = blocked & ~torch.eye(width, dtype=torch.bool)
        for block in self.blocks:
            x = block(x, blocked) * real
        user = self.final_norm(x[:, -1])  # [B, dim]
        return user @ self.item_embedding.weight.T


MODELS = {"gru4rec": GRU4Rec, "caser": Caser, "sasrec": SASRec}
