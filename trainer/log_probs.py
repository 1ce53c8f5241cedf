"""Sequence log-probabilities of K completions that share one prompt.

One function, :func:`completion_logps`, is used everywhere a log-probability of a completion is needed (policy,
reference, precomputation, evaluation). It has two modes:

``forward="shared"`` (default)
    Each example is packed into ONE sequence ``[prompt | c_0 | c_1 | ... | c_{K-1}]`` and run through the model
    once. A 4-D block attention mask lets every completion see the prompt's real tokens and itself (causally), never
    the other completions, and position ids restart at the prompt length for each completion, so each completion is
    scored exactly as if it followed the prompt alone. The prompt is encoded once per example instead of K times, and
    gradients from all K completions flow back through that single encoding. Being one ordinary model call, it works
    with LoRA, gradient checkpointing and DDP.

``forward="concat"``
    The straightforward layout: B*K full sequences ``prompt + completion`` in one model call. Its cost grows with K
    times the prompt length. It is kept as the reference implementation and for the benchmark. It goes through the
    same code path (the packed layout with a single completion per row), so the two modes differ only in how many
    times the prompt is encoded.

In both modes the LM head is applied only to the positions whose logits predict a completion token (the last prompt
position and the completion positions), via ``logits_to_keep``: with a 49k vocabulary the logits of the ~300 prompt
positions would otherwise dominate activation memory.

Only attention implementations that take an arbitrary 4-D mask are supported: "sdpa" (bool mask) and "eager"
(additive float mask). transformers passes a 4-D mask to them unchanged (``masking_utils`` returns it as-is).
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


def packed_attention_inputs(
    prompt_attention_mask: torch.Tensor,
    completion_attention_mask: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Block attention mask and position ids for the packed layout ``[prompt | c_0 | ... | c_{K-1}]``.

    Args:
        prompt_attention_mask: ``[B, P]``, 1 for real prompt tokens; prompts are LEFT-padded.
        completion_attention_mask: ``[B, K, C]``, 1 for real completion tokens; completions are RIGHT-padded.

    Returns:
        attention_mask: ``[B, 1, L, L]`` bool, True where query position may attend to key position,
            ``L = P + K*C``.
        position_ids: ``[B, L]``: prompt tokens get 0..n_b-1 (n_b = real prompt length), and every completion
        restarts at n_b, exactly the positions it would have following the prompt alone.
    """
    batch_size, prompt_len = prompt_attention_mask.shape
    _, num_completions, completion_len = completion_attention_mask.shape
    device = prompt_attention_mask.device
    total_len = prompt_len + num_completions * completion_len

    # Segment of each packed position: -1 for the prompt, k for completion k. Identical for every row because
    # prompts and completions are padded to the batch maximum.
    segment = torch.cat(
        [
            torch.full((prompt_len,), -1, device=device),
            torch.arange(num_completions, device=device).repeat_interleave(completion_len),
        ]
    )
    index = torch.arange(total_len, device=device)
    causal = index[:, None] >= index[None, :]
    visible = (segment[:, None] == segment[None, :]) | (segment[None, :] == -1)
    key_is_real = torch.cat(
        [prompt_attention_mask, completion_attention_mask.reshape(batch_size, -1)], dim=1
    ).bool()
    allowed = (causal & visible)[None] & key_is_real[:, None, :]
    # Padding queries would otherwise see no key at all; a fully masked softmax row gives NaN (eager) that can leak
    # into gradients. Letting every position see itself keeps all rows finite; no real token ever attends to a pad.
    allowed |= torch.eye(total_len, dtype=torch.bool, device=device)[None]

    real_prompt_len = prompt_attention_mask.sum(dim=1)  # [B]
    prompt_positions = (prompt_attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)
    completion_positions = real_prompt_len[:, None, None] + torch.arange(completion_len, device=device)
    completion_positions = completion_positions.expand(batch_size, num_completions, completion_len)
    position_ids = torch.cat([prompt_positions, completion_positions.reshape(batch_size, -1)], dim=1)
    return allowed[:, None], position_ids


def _packed_completion_logps(
    model: nn.Module,
    prompt_input_ids: torch.Tensor,
    prompt_attention_mask: torch.Tensor,
    completion_input_ids: torch.Tensor,
    completion_attention_mask: torch.Tensor,
) -> torch.Tensor:
    """Summed log-probs ``[B, K]`` of K completions packed after one prompt per row (one model call)."""
    batch_size, prompt_len = prompt_input_ids.shape
    _, num_completions, completion_len = completion_input_ids.shape
    device = prompt_input_ids.device

    input_ids = torch.cat([prompt_input_ids, completion_input_ids.reshape(batch_size, -1)], dim=1)
    attention_mask, position_ids = packed_attention_inputs(prompt_attention_mask, completion_attention_mask)
    if _attention_implementation(model) == "eager":
        # Eager attention adds the mask to the scores. A float32 mask is safe whatever the compute dtype (bf16/fp16
        # scores are promoted); sdpa takes the bool mask as-is, which avoids any mask/query dtype mismatch.
        blocked = torch.finfo(torch.float32).min
        attention_mask = torch.zeros(attention_mask.shape, device=device).masked_fill_(~attention_mask, blocked)

    # Token t of completion k is predicted by the logits at the last prompt position (t = 0) or at packed position
    # P + k*C + t - 1. Keep only those: row 0 = last prompt position, then C-1 rows per completion.
    completion_starts = prompt_len + completion_len * torch.arange(num_completions, device=device)
    kept_positions = torch.cat(
        [
            torch.tensor([prompt_len - 1], device=device),
            (completion_starts[:, None] + torch.arange(completion_len - 1, device=device)).reshape(-1),
        ]
    )
    logits = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        logits_to_keep=kept_positions,
        use_cache=False,
    ).logits  # [B, 1 + K*(C-1), V]

    # Row of `logits` predicting each completion token: [K, C].
    rows = torch.zeros(num_completions, completion_len, dtype=torch.long, device=device)
    rows[:, 1:] = 1 + torch.arange(num_completions * (completion_len - 1), device=device).view(
        num_completions, completion_len - 1
    )
    logits = logits[:, rows].float()  # [B, K, C, V]
    # log p(token) = logit[token] - logsumexp(logits); cheaper in memory than a full log_softmax.
    token_logps = logits.gather(-1, completion_input_ids.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(dim=-1)
    return (token_logps * completion_attention_mask).sum(dim=-1)


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
    batch_size, num_completions, completion_len = completion_input_ids.shape
    logps = _packed_completion_logps(
        model,
        prompt_input_ids.repeat_interleave(num_completions, dim=0),
        prompt_attention_mask.repeat_interleave(num_completions, dim=0),
        completion_input_ids.reshape(batch_size * num_completions, 1, completion_len),
        completion_attention_mask.reshape(batch_size * num_completions, 1, completion_len),
    )
    return logps.view(batch_size, num_completions)
