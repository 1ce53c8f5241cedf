"""Sequence log-probabilities of K completions that share one prompt.

One function, :func:`completion_logps`, is used everywhere a log-probability of a completion is needed (policy,
reference, precomputation, evaluation). It has two modes:

``forward="shared"`` (default)
    Each example is packed into ONE sequence ``[prompt | c_0 | c_1 | ... | c_{K-1}]`` (real tokens only, back to
    back; rows are right-padded to the longest) and run through the model once. A 4-D block attention mask lets every completion see
    the prompt's real tokens and itself (causally), never the other completions, and position ids restart at the
    prompt length for each completion, so each completion is scored exactly as if it followed the prompt alone. The prompt is encoded once per example instead of K times, and
    gradients from all K completions flow back through that single encoding. Being one ordinary model call, it works
    with LoRA, gradient checkpointing and DDP.

    The LM head is applied only to the positions whose logits predict a completion token (the last prompt position
    and every completion token but the last), via a boolean ``logits_to_keep``: with a 49k vocabulary the logits of
    the ~300 prompt positions would otherwise dominate activation memory.

``forward="concat"``
    The straightforward layout of the original S-DPO code: B*K full sequences ``prompt + completion`` in one model
    call, an ordinary 2-D padding mask, logits and log-softmax at every position (as its ``_get_batch_logps``). Its cost grows with K times the prompt length.
    It is an independent implementation kept as the reference (tests compare the two) and for the benchmark.

The shared mode needs an attention implementation that takes an arbitrary 4-D mask: "sdpa" (bool mask) or "eager"
(additive float mask); transformers passes a 4-D mask to them unchanged (``masking_utils`` returns it as-is).
"""

from __future__ import annotations

import torch
import torch.nn as nn

FORWARD_MODES = ("shared", "concat")
_SUPPORTED_ATTENTION = ("eager", "sdpa")


def _model_config(model: nn.Module):
    """The HF config of ``model``, looking through DDP/accelerate wrappers (which have no ``config``)."""
    while not hasattr(model, "config") and hasattr(model, "module"):
        model = model.module
    return model.config


def _attention_implementation(model: nn.Module) -> str:
    impl = getattr(_model_config(model), "_attn_implementation", None)
    if impl not in _SUPPORTED_ATTENTION:
        raise NotImplementedError(
            f"completion_logps passes a custom 4-D attention mask, which needs attn_implementation in "
            f"{_SUPPORTED_ATTENTION}; the model uses {impl!r}. Load the model with attn_implementation='sdpa'."
        )
    return impl


def pack_prompt_with_completions(
    prompt_input_ids: torch.Tensor,
    prompt_attention_mask: torch.Tensor,
    completion_input_ids: torch.Tensor,
    completion_attention_mask: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Pack each prompt and its K completions into one row ``[prompt | c_0 | c_1 | ... | c_{K-1} | pad]``.

    Only real tokens are packed, back to back (prompt padding and the padding between completions of different
    lengths are dropped), so row b holds ``n_b + sum_k len_k`` tokens; rows are right-padded to the longest.

    Args:
        prompt_input_ids: ``[B, P]`` padded prompts (the collator pads on the left);
        prompt_attention_mask: ``[B, P]``, 1 for real tokens, at least one per row.
        completion_input_ids: ``[B, K, C]`` RIGHT-padded completions;
        completion_attention_mask: ``[B, K, C]``, 1 for real tokens, at least one per completion.

    Returns a dict of ``[B, L]`` tensors
        input_ids;
        position_ids: prompt tokens 0..n_b-1 (n_b = real prompt length); each completion restarts at n_b, exactly
            the positions it would have following the prompt alone;
        segment: -1 prompt, k for completion k, -2 trailing padding;
        is_prompt_end: True on the last prompt token (its logits predict the first token of every completion);
        is_last: True on the last token of each completion (its logits predict nothing we need);
    and attention_mask: ``[B, 1, L, L]`` bool, True where a query may attend to a key: every completion sees the
    prompt and its own earlier tokens, never another completion.
    """
    batch_size, prompt_len = prompt_input_ids.shape
    _, num_completions, completion_len = completion_input_ids.shape
    device = prompt_input_ids.device
    if (completion_attention_mask.sum(dim=-1) == 0).any() or (prompt_attention_mask.sum(dim=-1) == 0).any():
        raise ValueError("every prompt and every completion needs at least one token")

    # Source layout [prompt | c_0 | ... | c_{K-1}] with padding; the real tokens are moved to the front of each row,
    # in order, by one scatter per field.
    real = torch.cat([prompt_attention_mask, completion_attention_mask.reshape(batch_size, -1)], dim=1).bool()
    packed_len = int(real.sum(dim=1).max())
    destination = torch.where(real, real.long().cumsum(dim=1) - 1, packed_len)  # padding goes to a dropped column

    def pack(values: torch.Tensor, fill: int) -> torch.Tensor:
        out = torch.full((batch_size, packed_len + 1), fill, dtype=values.dtype, device=device)
        return out.scatter_(1, destination, values.expand(batch_size, -1))[:, :packed_len]

    real_prompt_len = prompt_attention_mask.sum(dim=1, keepdim=True)  # [B, 1]
    source_positions = torch.cat(
        [
            prompt_attention_mask.long().cumsum(dim=1) - 1,
            real_prompt_len + torch.arange(completion_len, device=device).repeat(num_completions),
        ],
        dim=1,
    )
    source_segment = torch.cat(
        [
            torch.full((prompt_len,), -1, device=device),
            torch.arange(num_completions, device=device).repeat_interleave(completion_len),
        ]
    )
    input_ids = pack(torch.cat([prompt_input_ids, completion_input_ids.reshape(batch_size, -1)], dim=1), 0)
    position_ids = pack(source_positions, 0)
    segment = pack(source_segment[None], -2)
    next_segment = torch.cat([segment[:, 1:], torch.full_like(segment[:, :1], -2)], dim=1)

    index = torch.arange(packed_len, device=device)
    causal = index[:, None] >= index[None, :]
    visible = (segment[:, :, None] == segment[:, None, :]) | (segment[:, None, :] == -1)
    attention_mask = causal[None] & visible & (segment != -2)[:, None, :]
    # Padding queries would otherwise see no key at all; a fully masked softmax row gives NaN (eager) that can leak
    # into gradients. Letting every position see itself keeps all rows finite; no real token ever attends to a pad.
    attention_mask |= torch.eye(packed_len, dtype=torch.bool, device=device)[None]
    return {
        "input_ids": input_ids,
        "position_ids": position_ids,
        "segment": segment,
        "is_prompt_end": (segment == -1) & (next_segment != -1),
        "is_last": (segment >= 0) & (next_segment != segment),
        "attention_mask": attention_mask[:, None],
    }


def _packed_completion_logps(
    model: nn.Module,
    prompt_input_ids: torch.Tensor,
    prompt_attention_mask: torch.Tensor,
    completion_input_ids: torch.Tensor,
    completion_attention_mask: torch.Tensor,
) -> torch.Tensor:
    """Summed log-probs ``[B, K]`` of K completions packed after one prompt per row (one model call)."""
    packed = pack_prompt_with_completions(
        prompt_input_ids, prompt_attention_mask, completion_input_ids, completion_attention_mask
    )
    return _packed_forward(model, packed, packed["attention_mask"], completion_input_ids)


def _packed_forward(model: nn.Module, packed: dict, attention_mask: torch.Tensor, completion_input_ids: torch.Tensor,
                    cache=None) -> torch.Tensor:
    """One model call on packed rows (optionally on top of a KV ``cache``); ``[B, K]`` summed completion log-probs."""
    if _attention_implementation(model) == "eager":
        # Eager attention adds the mask to the scores. A float32 mask is safe whatever the compute dtype (bf16/fp16
        # scores are promoted); sdpa takes the bool mask as-is, which avoids any mask/query dtype mismatch.
        attention_mask = torch.zeros(attention_mask.shape, device=attention_mask.device).masked_fill_(
            ~attention_mask, torch.finfo(torch.float32).min
        )
    # Logits are needed only where they predict a completion token: at the last prompt position (first token of
    # every completion) and at each completion token that is not its completion's last. Only those M positions go
    # through the LM head; the output is flattened row-major to [M, V].
    keep = packed["is_prompt_end"] | ((packed["segment"] >= 0) & ~packed["is_last"])
    logits = model(
        input_ids=packed["input_ids"],
        attention_mask=attention_mask,
        position_ids=packed["position_ids"],
        logits_to_keep=keep,
        past_key_values=cache,
        use_cache=cache is not None,
    ).logits.float()  # [M, V]
    return _summed_completion_logps(logits, packed, keep, completion_input_ids)


def _summed_completion_logps(logits: torch.Tensor, packed: dict, keep: torch.Tensor,
                             completion_input_ids: torch.Tensor) -> torch.Tensor:
    """``[B, K]`` summed log-probs of the packed completions from the ``[M, V]`` logits of the kept positions."""
    batch_size, num_completions = completion_input_ids.shape[:2]
    segment, is_prompt_end = packed["segment"], packed["is_prompt_end"]
    log_normalizer = logits.logsumexp(dim=-1)  # [M]

    # (kept row, target token) of every completion token, gathered in ONE indexing op so that its backward writes a
    # single [M, V] gradient. First tokens of all K completions are predicted from the row's last prompt position;
    # every other token from the previous packed position, which belongs to the same completion.
    kept_rows = torch.arange(logits.shape[0], device=logits.device)
    prompt_end_rows = kept_rows[is_prompt_end[keep]]  # [B], in batch order
    inner = ~is_prompt_end[keep]
    inner_rows = kept_rows[inner]  # [M - B]
    next_ids = torch.cat([packed["input_ids"][:, 1:], torch.zeros_like(packed["input_ids"][:, :1])], dim=1)
    rows = torch.cat([prompt_end_rows.repeat_interleave(num_completions), inner_rows])
    targets = torch.cat([completion_input_ids[:, :, 0].reshape(-1), next_ids[keep][inner]])
    token_logps = logits.view(-1)[rows * logits.shape[1] + targets] - log_normalizer[rows]
    first_logps, inner_logps = token_logps.split([batch_size * num_completions, len(inner_rows)])

    # Sum the inner tokens of each completion into its (row, completion) slot.
    owner = (torch.arange(batch_size, device=segment.device)[:, None] * num_completions + segment)[keep][inner]
    rest_logps = torch.zeros_like(first_logps).index_add(0, owner, inner_logps)
    return (first_logps + rest_logps).view(batch_size, num_completions)


@torch.no_grad()
def completion_logps_after_cache(
    model: nn.Module,
    cache,
    prompt_input_ids: torch.Tensor,
    prompt_attention_mask: torch.Tensor,
    completion_input_ids: torch.Tensor,
    completion_attention_mask: torch.Tensor,
) -> torch.Tensor:
    """``[B, K]`` summed log-probs of K completions per prompt, given a KV ``cache`` of all prompt tokens but the last.

    For evaluation that also generates: the prompts ``[B, P]`` (LEFT-padded, as ``generate`` takes them) were run
    once through the model up to column P-2 into ``cache``; this call runs only the last prompt token and the packed
    completions on top of it (the same block mask and position ids as the shared forward), then crops the cache back
    to P-1 tokens, so ``generate`` can continue from it without encoding the prompt again. Without gradients.
    """
    cached = prompt_input_ids.shape[1] - 1
    packed = pack_prompt_with_completions(
        prompt_input_ids[:, -1:], torch.ones_like(prompt_attention_mask[:, -1:]), completion_input_ids,
        completion_attention_mask,
    )
    # Positions continue the prompt's (real tokens count from 0 on the left-padded row).
    packed["position_ids"] = packed["position_ids"] + prompt_attention_mask.sum(dim=1, keepdim=True) - 1
    sees_cache = prompt_attention_mask[:, None, None, :cached].bool().expand(-1, 1, packed["input_ids"].shape[1], -1)
    attention_mask = torch.cat([sees_cache, packed["attention_mask"]], dim=-1)
    logps = _packed_forward(model, packed, attention_mask, completion_input_ids, cache)
    cache.crop(-packed["input_ids"].shape[1])  # back to the P-1 prompt tokens
    return logps


def _concat_completion_logps(
    model: nn.Module,
    prompt_input_ids: torch.Tensor,
    prompt_attention_mask: torch.Tensor,
    completion_input_ids: torch.Tensor,
    completion_attention_mask: torch.Tensor,
) -> torch.Tensor:
    """Summed log-probs ``[B, K]`` from B*K independent ``prompt + completion`` rows, computed the way the original
    S-DPO code does it: an ordinary 2-D padding mask, logits and log-softmax at every position, the prompt masked out
    of the sum."""
    batch_size, prompt_len = prompt_input_ids.shape
    _, num_completions, completion_len = completion_input_ids.shape
    input_ids = torch.cat(
        [
            prompt_input_ids.repeat_interleave(num_completions, dim=0),
            completion_input_ids.reshape(batch_size * num_completions, completion_len),
        ],
        dim=1,
    )
    attention_mask = torch.cat(
        [
            prompt_attention_mask.repeat_interleave(num_completions, dim=0),
            completion_attention_mask.reshape(batch_size * num_completions, completion_len),
        ],
        dim=1,
    )
    # Left padding shifts the prompt; positions count real tokens only, so they match the unpadded sequence.
    position_ids = (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)
    logits = model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
    ).logits.float()  # [B*K, P+C, V]
    # Token i+1 is predicted at position i; only completion tokens count.
    is_completion = torch.zeros_like(attention_mask, dtype=torch.bool)
    is_completion[:, prompt_len:] = attention_mask[:, prompt_len:].bool()
    token_logps = logits[:, :-1].log_softmax(dim=-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return (token_logps * is_completion[:, 1:]).sum(dim=-1).view(batch_size, num_completions)


def completion_logps(
    model: nn.Module,
    prompt_input_ids: torch.Tensor,
    prompt_attention_mask: torch.Tensor,
    completion_input_ids: torch.Tensor,
    completion_attention_mask: torch.Tensor,
    forward: str = "shared",
) -> torch.Tensor:
    """Sum of token log-probs of each of the K completions of every prompt, in one model call.

    Args:
        model: a causal LM (``transformers`` model, ``peft.PeftModel`` or a DDP wrapper of either) that accepts
            ``position_ids``, a 4-D ``attention_mask`` and ``logits_to_keep``.
        prompt_input_ids: ``[B, P]`` LEFT-padded prompts.
        prompt_attention_mask: ``[B, P]``, 1 for real tokens.
        completion_input_ids: ``[B, K, C]`` RIGHT-padded completions (index 0 = chosen in preference batches).
        completion_attention_mask: ``[B, K, C]``, 1 for real tokens.
        forward: ``"shared"`` (each prompt encoded once, K completions packed after it) or ``"concat"`` (B*K
            independent prompt+completion sequences). Both give the same values up to float rounding.

    Returns:
        ``[B, K]`` float32 tensor: ``log pi(completion_k | prompt)`` summed over real completion tokens; differentiable
        with respect to the model's trainable parameters when grad is enabled.
    """
    if forward not in FORWARD_MODES:
        raise ValueError(f"forward must be one of {FORWARD_MODES}, got {forward!r}")
    if forward == "shared":
        return _packed_completion_logps(
            model, prompt_input_ids, prompt_attention_mask, completion_input_ids, completion_attention_mask
        )
    return _concat_completion_logps(
        model, prompt_input_ids, prompt_attention_mask, completion_input_ids, completion_attention_mask
    )
