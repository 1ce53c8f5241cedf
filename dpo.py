"""Stage 2 baseline: pairwise DPO from the SFT model, i.e. S-DPO with one negative.

    python dpo.py --model_name tiny --dataset synthetic \
        --resume_from_checkpoint outputs/sft/final_checkpoint --output_dir outputs/dpo

With one negative the softmax-DPO loss is exactly DPO's -log sigmoid(beta * (Δ_chosen - Δ_rejected)),
so this runs the same trainer as `softmax_dpo.py`; every flag is the same except that `neg_num` is 1.
"""

from __future__ import annotations

import inspect

import runtime
import softmax_dpo


def train(**flags) -> str:
    """Pairwise DPO: `softmax_dpo.train` with one negative per prompt (same flags)."""
    neg_num = flags.pop("neg_num", 1)
    if neg_num != 1:
        raise runtime.UsageError(f"dpo.py is the pairwise baseline (neg_num 1); use softmax_dpo.py for neg_num={neg_num}")
    flags.setdefault("output_dir", "outputs/dpo")
    return softmax_dpo.train(neg_num=1, **flags)


# Show softmax_dpo's flags in `--help`, with this stage's defaults; all are passed by name.
_DEFAULTS = {"neg_num": 1, "output_dir": "outputs/dpo"}
train.__signature__ = inspect.signature(softmax_dpo.train).replace(parameters=[
    parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY, default=_DEFAULTS.get(parameter.name, parameter.default))
    for parameter in inspect.signature(softmax_dpo.train).parameters.values()
])

if __name__ == "__main__":
    runtime.main(train)
