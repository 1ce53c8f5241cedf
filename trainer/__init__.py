"""S-DPO training: the softmax-DPO loss, shared-prompt completion log-probs and the trainer."""

from .checkpoints import AtomicCheckpoints, checkpoint_problem
from .log_probs import completion_logps, pack_prompt_with_completions
from .non_finite import NonFiniteError, StopOnNonFinite
from .softmax_dpo_trainer import (
    SoftmaxDPOCollator,
    SoftmaxDPOConfig,
    SoftmaxDPOTrainer,
    sdpo_loss,
)

__all__ = [
    "AtomicCheckpoints",
    "checkpoint_problem",
    "NonFiniteError",
    "StopOnNonFinite",
    "SoftmaxDPOCollator",
    "SoftmaxDPOConfig",
    "SoftmaxDPOTrainer",
    "completion_logps",
    "pack_prompt_with_completions",
    "sdpo_loss",
]
