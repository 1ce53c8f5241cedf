"""Stop a training run at the first non-finite loss or gradient, naming the step and the batch's records.

`StopOnNonFinite` is a mixin for `transformers.Trainer` subclasses (the S-DPO trainer and the SFT
stage's `SFTTrainer`). After every micro-batch's backward pass it checks the loss and the gradients of
the trainable parameters (the loss only under fp16, whose loss scaler handles overflowing gradients itself);
the first NaN or infinity raises `NonFiniteError` before the optimizer applies it. The run stops there:
checkpoints already written stay as they were, and the stage script never reaches the line that writes
`final_checkpoint`, so no NaN model is ever saved as final.

The records of the failing batch are found by their token ids: a stage registers, for each training
record, the unpadded ids of the column named by `record_ids_key` (`register_records`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch


class NonFiniteError(RuntimeError):
    """Training produced a non-finite loss or gradient; the message is one line."""


def non_finite_part(loss: torch.Tensor, grads: Sequence[torch.Tensor]) -> str | None:
    """Which part is not finite: "loss", "gradient" or None. One device-to-host transfer for all of them (on a
    GPU every separate `.all()` read would be a sync)."""
    flags = torch.stack([torch.isfinite(loss).all(), *(torch.isfinite(g).all() for g in grads)])
    finite = flags.cpu().tolist()
    if not finite[0]:
        return "loss"
    return None if all(finite) else "gradient"


class StopOnNonFinite:
    """Mixin: raise `NonFiniteError` at the first micro-batch with a non-finite loss or gradient."""

    record_ids_key = "input_ids"  # the batch column whose unpadded ids identify a record
    record_mask_key = "attention_mask"

    def register_records(self, token_ids: Sequence[Sequence[int]], record_numbers: Sequence[int],
                         source: str | Path) -> None:
        """`token_ids[i]` (unpadded ids of `record_ids_key`) belongs to record `record_numbers[i]` of `source`."""
        self._record_source = str(source)
        self._records_by_ids: dict[tuple[int, ...], list[int]] = {}
        for ids, number in zip(token_ids, record_numbers):
            self._records_by_ids.setdefault(tuple(ids), []).append(number)

    def batch_records(self, inputs: dict) -> list[int]:
        """The record numbers of a collated batch (several when records share the same ids)."""
        lookup = getattr(self, "_records_by_ids", {})
        ids, mask = inputs.get(self.record_ids_key), inputs.get(self.record_mask_key)
        if ids is None:
            return []
        numbers: list[int] = []
        for row, row_mask in zip(ids.tolist(), (mask.tolist() if mask is not None else [None] * len(ids))):
            kept = tuple(t for t, m in zip(row, row_mask) if m) if row_mask is not None else tuple(row)
            numbers += lookup.get(kept, [])
        return sorted(set(numbers))

    def training_step(self, model, inputs, num_items_in_batch=None):
        records = self.batch_records(inputs)  # before the parent may move or pop the batch's tensors
        loss = super().training_step(model, inputs, num_items_in_batch)
        # Under fp16 the gradients are scaled, and an infinite one is routine: the loss scaler skips that step and
        # lowers the scale. Only the (unscaled) loss is checked then.
        scaled = getattr(getattr(self, "accelerator", None), "scaler", None) is not None
        grads = [] if scaled else [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
        what = non_finite_part(loss, grads)
        if what is not None:
            checkpoints = sorted(Path(self.args.output_dir).glob("checkpoint-*"),
                                 key=lambda path: int(path.name.split("-")[-1]) if path.name.split("-")[-1].isdigit() else -1)
            last = str(checkpoints[-1]) if checkpoints else "none written yet"
            source = getattr(self, "_record_source", "the training split")
            raise NonFiniteError(
                f"step {self.state.global_step + 1}: non-finite {what} on the batch of records {records} of {source}; "
                f"training stopped, no final checkpoint written (last good checkpoint: {last})"
            )
        return loss
