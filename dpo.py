"""Stage 2 baseline: pairwise DPO from the SFT adapter, i.e. S-DPO with one negative.

    python dpo.py --model_name tiny --dataset synthetic \
        --resume_from_checkpoint outputs/sft/final_checkpoint --output_dir outputs/dpo

With one negative the softmax-DPO loss is exactly DPO's -log sigmoid(beta * (Δ_chosen - Δ_rejected)),
so this runs the same trainer as `softmax_dpo.py`; every flag is the same except that `neg_num` is 1.
"""

from __future__ import annotations

import functools

import runtime
import softmax_dpo


@functools.wraps(softmax_dpo.train)
def train(*args, neg_num: int = 1, **kwargs) -> str:
    """Pairwise DPO: `softmax_dpo.train` with one negative per prompt (see its flags)."""
    if neg_num != 1:
        raise runtime.UsageError(f"dpo.py is the pairwise baseline (neg_num 1); use softmax_dpo.py for neg_num={neg_num}")
    kwargs.setdefault("output_dir", "outputs/dpo")
    return softmax_dpo.train(*args, neg_num=1, **kwargs)


if __name__ == "__main__":
    runtime.main(train)
