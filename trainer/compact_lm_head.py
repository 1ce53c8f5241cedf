"""SFT on a CPU: trl's fused LM head projects only the positions that carry a label.

trl 1.16's ``SFTTrainer`` replaces the model's forward with a fused LM head (``trl.trainer.utils.add_fused_lm_head``)
that projects hidden states through the vocabulary in tiles. Where Triton runs (CUDA, XPU) it keeps only the
positions whose next token is labelled; elsewhere it projects every position, so that tile shapes stay fixed for
graph compilers (Neuron). Nothing is compiled on a CPU, and our SFT rows label only the completion: an item name
and EOS (2-10 tokens) after a prompt of 100-200. Projecting the whole prompt through the vocabulary (49k rows for
SmolLM2) is most of the head's cost and none of the loss.

``compact_lm_head_on_cpu()`` makes that choice "labelled positions only" for CPU tensors too. The selection is trl's
own code path (``hidden_states[mask]`` then ``masked_scatter``), so the loss, its gradients and the token metrics
are those of the full projection (tested); only the unlabelled positions' work is skipped. The kernel itself still
picks its CPU implementation (``trl.kernels.chunked_logprob`` keeps its own ``_use_triton``).
"""

from __future__ import annotations

import torch
import trl.trainer.utils as trl_utils

_MARK = "_sdpo_compact_on_cpu"


def compact_lm_head_on_cpu() -> None:
    """Make trl's fused LM head score only labelled positions on CPU tensors (idempotent; process-wide)."""
    original = getattr(trl_utils, "_use_triton", None)
    if original is None:  # another trl than the pinned one: its fused head may choose differently
        raise RuntimeError("trl.trainer.utils._use_triton is gone: check add_fused_lm_head in the installed trl "
                           "(requirements.txt pins the version this was written for)")
    if getattr(original, _MARK, False):
        return

    def labelled_positions_only(device: torch.device) -> bool:
        return device.type == "cpu" or original(device)

    setattr(labelled_positions_only, _MARK, True)
    trl_utils._use_triton = labelled_positions_only
