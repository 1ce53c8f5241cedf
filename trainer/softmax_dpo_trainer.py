"""S-DPO: softmax DPO with one chosen and N rejected completions per prompt (Chen et al., NeurIPS 2024).

With implicit rewards ``r = beta * (log pi_theta(y|x) - log pi_ref(y|x))`` (sums over completion tokens), the loss of
one example is ``-log sigmoid(-log sum_j exp(r_j - r_w)) = softplus(logsumexp_j(r_j - r_w))``; for N = 1 it is DPO.

Why ``transformers.Trainer`` and not trl's ``DPOTrainer``
---------------------------------------------------------
trl 1.16's ``DPOTrainer`` is built around exactly one rejected completion per row at every layer: its ``__init__``
tokenizes text columns ``prompt``/``chosen``/``rejected`` (it needs a tokenizer and rejects rows that arrive already
tokenized with K completions), its collator stacks ``[chosen; rejected]`` into one 2B batch, ``_compute_loss`` and the
fused LM head it patches onto the model split log-probs into two halves, precomputation stores scalar
``ref_chosen_logps``/``ref_rejected_logps`` columns, and with PEFT its reference is a copy of the trainable adapter
made at start-up or the adapter-free base model, not a separately loaded SFT adapter. Supporting N rejected
completions and a single shared prompt encoding would mean overriding ``__init__``'s dataset preparation, the
collator, ``_compute_loss``, ``compute_ref_log_probs``, ``_precompute_ref_logps``, ``evaluate`` and the signature
columns, i.e. most of the class. ``SoftmaxDPOTrainer`` therefore subclasses ``transformers.Trainer`` and overrides only
``compute_loss``, ``prediction_step`` (eval loss), ``log`` (metrics), ``_save`` (save only the trained adapter) and
``_set_signature_columns_if_needed`` (keep our columns).

Reference model
---------------
The reference is the SFT model, with no second copy of the base weights. Either

* ``model`` is a ``peft.PeftModel`` whose active (trainable) adapter starts from the SFT adapter, and a frozen copy of
  the SFT adapter is loaded next to it by the caller::

      model = PeftModel.from_pretrained(base, sft_dir, is_trainable=True)              # adapter "default"
      model.load_adapter(sft_dir, adapter_name="reference", is_trainable=False)

  The trainer activates ``reference`` under ``torch.no_grad()`` for the reference log-probs of each batch, then
  switches back (restoring every parameter's ``requires_grad``, which peft's ``set_adapter`` flips); or
* ``precompute_ref_log_probs=True``: before training one no-grad pass over the train and eval datasets with the
  model as it is at construction (the SFT model; the reference adapter if there is one) stores ``ref_logps`` (K floats)
  per row, and no reference adapter is needed during training.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from transformers import Trainer, TrainingArguments
from transformers.trainer import TRAINING_ARGS_NAME

from .log_probs import FORWARD_MODES, completion_logps
from .checkpoints import AtomicCheckpoints
from .non_finite import StopOnNonFinite

try:
    from peft import PeftModel
except ImportError:  # peft is optional when reference log-probs are precomputed
    PeftModel = None

logger = logging.getLogger(__name__)

REF_LOGPS_COLUMN = "ref_logps"
_BATCH_KEYS = ("prompt_input_ids", "prompt_attention_mask", "completion_input_ids", "completion_attention_mask")


def sdpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Softmax-DPO loss of a batch of preference examples with N rejected completions each.

    Args:
        policy_chosen_logps: ``[B]`` log pi_theta(y_w | x).
        policy_rejected_logps: ``[B, N]`` log pi_theta(y_j | x).
        reference_chosen_logps: ``[B]`` log pi_ref(y_w | x).
        reference_rejected_logps: ``[B, N]`` log pi_ref(y_j | x).
        beta: temperature of the implicit reward.

    Returns:
        losses: ``[B]`` ``softplus(logsumexp_j(beta * (Delta_j - Delta_w)))`` with ``Delta = policy - reference``;
            finite for any finite input (the log-sum-exp is evaluated stably, softplus is linear for large inputs).
        chosen_rewards: ``[B]`` ``beta * Delta_w``, detached.
        rejected_rewards: ``[B, N]`` ``beta * Delta_j``, detached.
    """
    chosen_logratios = policy_chosen_logps - reference_chosen_logps
    rejected_logratios = policy_rejected_logps - reference_rejected_logps
    # -log sigmoid(-log sum_j exp(r_j - r_w)) == softplus(logsumexp_j(r_j - r_w))
    logits = beta * (rejected_logratios - chosen_logratios.unsqueeze(-1))
    losses = F.softplus(torch.logsumexp(logits, dim=-1))
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


@dataclass
class SoftmaxDPOConfig(TrainingArguments):
    """``TrainingArguments`` plus the S-DPO settings.

    Training defaults to fp32 (``bf16``/``fp16`` stay off unless asked for) and gradient checkpointing off.
    """

    beta: float = field(default=1.0, metadata={"help": "Temperature beta of the implicit reward beta*log(pi/pi_ref)."})
    forward: str = field(
        default="shared",
        metadata={
            "help": "How completions are scored: 'shared' encodes each prompt once with its K completions packed "
            "after it (block attention mask); 'concat' runs B*K full prompt+completion sequences."
        },
    )
    precompute_ref_log_probs: bool = field(
        default=False,
        metadata={
            "help": "Compute reference log-probs once before training (no-grad pass with the model as given, i.e. "
            "the SFT model) and store them as a 'ref_logps' column; no reference adapter is needed then."
        },
    )
    reference_adapter_name: str = field(
        default="reference",
        metadata={
            "help": "Name of the frozen PEFT adapter holding the SFT weights, activated under no_grad to compute "
            "reference log-probs on the fly (used when the batch carries no precomputed 'ref_logps')."
        },
    )
    remove_unused_columns: bool = field(
        default=False,
        metadata={"help": "Keep dataset columns: the preference columns are not model forward arguments."},
    )

    def __post_init__(self):
        super().__post_init__()
        if self.forward not in FORWARD_MODES:
            raise ValueError(f"forward must be one of {FORWARD_MODES}, got {self.forward!r}")
        if self.beta <= 0:
            raise ValueError(f"beta must be positive, got {self.beta}")


class SoftmaxDPOCollator:
    """Pads pre-tokenized preference rows into the batch layout of :func:`completion_logps`.

    Each row holds ``prompt_input_ids: list[int]`` and ``completion_input_ids: list[list[int]]`` (K completions,
    index 0 = chosen, each ending with EOS), optionally ``ref_logps: list[float]`` (K). Other keys are ignored.

    Returns a dict with ``prompt_input_ids``/``prompt_attention_mask`` ``[B, P]`` (LEFT-padded),
    ``completion_input_ids``/``completion_attention_mask`` ``[B, K, C]`` (RIGHT-padded) and, when every row has it,
    ``ref_logps`` ``[B, K]`` float32.
    """

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        num_completions = {len(row["completion_input_ids"]) for row in rows}
        if len(num_completions) != 1:
            raise ValueError(f"All rows of a batch need the same number of completions, got {sorted(num_completions)}")
        (num_completions,) = num_completions
        batch_size = len(rows)
        prompt_len = max(len(row["prompt_input_ids"]) for row in rows)
        completion_len = max(len(c) for row in rows for c in row["completion_input_ids"])

        prompt_ids = torch.full((batch_size, prompt_len), self.pad_token_id, dtype=torch.long)
        prompt_mask = torch.zeros((batch_size, prompt_len), dtype=torch.long)
        completion_ids = torch.full((batch_size, num_completions, completion_len), self.pad_token_id, dtype=torch.long)
        completion_mask = torch.zeros((batch_size, num_completions, completion_len), dtype=torch.long)
        for b, row in enumerate(rows):
            prompt = row["prompt_input_ids"]
            if len(prompt) == 0:
                raise ValueError("Empty prompt: the first completion token needs a prompt position to predict it.")
            prompt_ids[b, prompt_len - len(prompt) :] = torch.as_tensor(prompt, dtype=torch.long)
            prompt_mask[b, prompt_len - len(prompt) :] = 1
            for k, completion in enumerate(row["completion_input_ids"]):
                completion_ids[b, k, : len(completion)] = torch.as_tensor(completion, dtype=torch.long)
                completion_mask[b, k, : len(completion)] = 1

        batch = {
            "prompt_input_ids": prompt_ids,
            "prompt_attention_mask": prompt_mask,
            "completion_input_ids": completion_ids,
            "completion_attention_mask": completion_mask,
        }
        if all(row.get(REF_LOGPS_COLUMN) is not None for row in rows):
            batch[REF_LOGPS_COLUMN] = torch.tensor([row[REF_LOGPS_COLUMN] for row in rows], dtype=torch.float32)
        return batch


def _is_peft_model(model) -> bool:
    return PeftModel is not None and isinstance(model, PeftModel)


class reference_mode:  # noqa: N801 - a context manager, named like contextlib.suppress
    """Run ``model`` as the reference: no grad, eval mode (no dropout, no checkpointing), and with ``adapter_name``
    active if given. Restores the active adapter, the train/eval mode and every parameter's ``requires_grad`` on exit,
    also when the body raises: peft's ``set_adapter`` marks the newly active adapter trainable and the others frozen,
    which must not leak into the optimizer or DDP's view of the trainable parameters.

    A class rather than a ``@contextlib.contextmanager`` generator so that mutation testing (mutmut skips decorated
    functions) covers it."""

    def __init__(self, model: torch.nn.Module, adapter_name: str | None):
        self.model = model
        self.adapter_name = adapter_name
        self._no_grad = torch.no_grad()

    def __enter__(self) -> None:
        model = self.model
        self._was_training = model.training
        self._requires_grad = [(p, p.requires_grad) for p in model.parameters()]
        self._previous_adapter = model.active_adapter if self.adapter_name is not None else None
        try:
            model.eval()
            if self.adapter_name is not None:
                model.set_adapter(self.adapter_name)
        except BaseException:
            self._restore()
            raise
        self._no_grad.__enter__()

    def __exit__(self, *exc_info) -> None:
        self._no_grad.__exit__(*exc_info)
        self._restore()

    def _restore(self) -> None:
        if self.adapter_name is not None:
            self.model.set_adapter(self._previous_adapter)
        for param, flag in self._requires_grad:
            param.requires_grad_(flag)
        self.model.train(self._was_training)


class SoftmaxDPOTrainer(AtomicCheckpoints, StopOnNonFinite, Trainer):
    """Trainer for S-DPO. See the module docstring for the reference-model options.

    Args:
        model: the policy, normally a ``peft.PeftModel`` whose active adapter (ideally named ``"default"``) is
            trainable; any causal LM works with ``precompute_ref_log_probs=True``.
        args: :class:`SoftmaxDPOConfig`.
        train_dataset / eval_dataset: ``datasets.Dataset`` or list of dicts with ``prompt_input_ids`` and
            ``completion_input_ids`` (already tokenized; see :class:`SoftmaxDPOCollator`).
        pad_token_id: id used to pad; defaults to ``processing_class.pad_token_id`` then ``model.config.pad_token_id``.
        Other arguments are passed to ``transformers.Trainer``.
    """

    # compute_loss returns a per-batch mean; Trainer divides it by the gradient-accumulation steps.
    loss_is_scaled_for_ga = False
    # A non-finite loss or gradient stops training; the batch's records are named by their prompts.
    record_ids_key, record_mask_key = "prompt_input_ids", "prompt_attention_mask"

    def __init__(
        self,
        model: torch.nn.Module,
        args: SoftmaxDPOConfig,
        train_dataset=None,
        eval_dataset=None,
        data_collator=None,
        processing_class=None,
        pad_token_id: int | None = None,
        **kwargs,
    ):
        if not isinstance(args, SoftmaxDPOConfig):
            raise TypeError("args must be a SoftmaxDPOConfig")
        if data_collator is None:
            if pad_token_id is None:
                pad_token_id = getattr(processing_class, "pad_token_id", None)
            if pad_token_id is None:
                pad_token_id = getattr(model.config, "pad_token_id", None)
            if pad_token_id is None:
                raise ValueError("Pass pad_token_id (or a processing_class / model config with a pad token id).")
            data_collator = SoftmaxDPOCollator(pad_token_id)

        self.reference_adapter = None
        if _is_peft_model(model) and args.reference_adapter_name in model.peft_config:
            if model.active_adapter == args.reference_adapter_name:
                raise ValueError(
                    f"The active adapter is the reference adapter {args.reference_adapter_name!r}; activate the "
                    "trainable policy adapter before building the trainer."
                )
            self.reference_adapter = args.reference_adapter_name
            self.policy_adapter = model.active_adapter
            # The reference must never reach the optimizer, whatever is_trainable it was loaded with.
            for name, param in model.named_parameters():
                if f".{self.reference_adapter}." in name:
                    param.requires_grad_(False)
            if self.policy_adapter != "default":
                logger.warning(
                    "Trainable adapter %r is not named 'default': peft saves it in a sub-folder of the output dir, "
                    "where load_best_model_at_end / resume_from_checkpoint will not find it.",
                    self.policy_adapter,
                )
        if self.reference_adapter is None and not args.precompute_ref_log_probs:
            raise ValueError(
                "S-DPO needs the reference (SFT) model's log-probs: either load the SFT adapter as a frozen second "
                f"adapter named {args.reference_adapter_name!r} (model.load_adapter(sft_path, adapter_name="
                f"{args.reference_adapter_name!r}, is_trainable=False)) or set precompute_ref_log_probs=True."
            )

        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            **kwargs,
        )
        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}

        if args.precompute_ref_log_probs:
            if self.train_dataset is not None:
                self.train_dataset = self.add_reference_logps(self.train_dataset)
            if isinstance(self.eval_dataset, dict):
                self.eval_dataset = {name: self.add_reference_logps(ds) for name, ds in self.eval_dataset.items()}
            elif self.eval_dataset is not None:
                self.eval_dataset = self.add_reference_logps(self.eval_dataset)

    # ---- reference log-probs -------------------------------------------------------------------------------------

    def reference_logps(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Reference log-probs ``[B, K]`` of a collated batch, from the reference adapter (or, when there is none,
        from the model as it is, which is only the reference before training: used for precomputation)."""
        model = self.accelerator.unwrap_model(self.model)
        with reference_mode(model, self.reference_adapter):
            return completion_logps(model, *(batch[k] for k in _BATCH_KEYS), forward=self.args.forward)

    def add_reference_logps(self, dataset):
        """Return ``dataset`` with a ``ref_logps`` column (K floats per row) computed by :meth:`reference_logps`.

        Accepts a ``datasets.Dataset`` or a list of dicts. Every process computes the whole column (no sharding), so
        the result is the same on every rank without communication.
        """
        if self.reference_adapter is None and self.state.global_step > 0:
            raise ValueError(
                "Cannot precompute reference log-probs after training started without a reference adapter: the "
                "model is no longer the SFT model."
            )
        loader = DataLoader(
            dataset, batch_size=self.args.per_device_eval_batch_size, collate_fn=self.data_collator, shuffle=False
        )
        device = self.args.device
        values = []
        # Same precision as the training forward passes (accelerate autocasts those when args.bf16), so the
        # policy/reference log-ratio starts at zero.
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bool(self.args.bf16)):
            for batch in loader:
                batch = {k: v.to(device) for k, v in batch.items() if k in _BATCH_KEYS}
                values.extend(self.reference_logps(batch).float().cpu().tolist())
        logger.info("Precomputed reference log-probs for %d rows", len(values))
        if hasattr(dataset, "add_column"):
            if REF_LOGPS_COLUMN in dataset.column_names:
                dataset = dataset.remove_columns(REF_LOGPS_COLUMN)
            return dataset.add_column(REF_LOGPS_COLUMN, values)
        return [{**row, REF_LOGPS_COLUMN: value} for row, value in zip(dataset, values)]

    # ---- loss, evaluation, logging -------------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Mean S-DPO loss of the batch. Chosen is completion 0, the N = K-1 others are rejected."""
        policy_logps = completion_logps(model, *(inputs[k] for k in _BATCH_KEYS), forward=self.args.forward)
        if REF_LOGPS_COLUMN in inputs:
            ref_logps = inputs[REF_LOGPS_COLUMN].to(policy_logps.dtype)
        elif self.reference_adapter is not None:
            ref_logps = self.reference_logps(inputs)
        else:
            raise ValueError(
                "The batch has no 'ref_logps' and the model has no reference adapter: precompute the reference "
                "log-probs of this dataset (trainer.add_reference_logps) or load a reference adapter."
            )
        losses, chosen_rewards, rejected_rewards = sdpo_loss(
            policy_logps[:, 0], policy_logps[:, 1:], ref_logps[:, 0], ref_logps[:, 1:], self.args.beta
        )
        loss = losses.mean()
        self._store_metrics(policy_logps.detach(), chosen_rewards, rejected_rewards)
        if return_outputs:
            return loss, {"policy_logps": policy_logps.detach(), "ref_logps": ref_logps}
        return loss

    def _store_metrics(self, policy_logps, chosen_rewards, rejected_rewards) -> None:
        mode = "train" if self.model.training else "eval"
        gather = self.accelerator.gather_for_metrics
        chosen_rewards, rejected_rewards, policy_logps = gather((chosen_rewards, rejected_rewards, policy_logps))
        metrics = self._metrics[mode]
        metrics["rewards/chosen"].append(chosen_rewards.mean().item())
        metrics["rewards/rejected"].append(rejected_rewards.mean().item())
        metrics["rewards/accuracies"].append(
            (chosen_rewards.unsqueeze(-1) > rejected_rewards).all(dim=-1).float().mean().item()
        )
        metrics["rewards/margins"].append((chosen_rewards - rejected_rewards.mean(dim=-1)).mean().item())
        metrics["logps/chosen"].append(policy_logps[:, 0].mean().item())
        metrics["logps/rejected"].append(policy_logps[:, 1:].mean().item())

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Eval step: returns the S-DPO loss (so ``eval_loss`` exists) and no logits/labels."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Adds the batch-averaged S-DPO metrics stored since the last log (``eval_``-prefixed during evaluation)."""
        mode = "train" if self.model.training else "eval"
        averaged = {key: sum(values) / len(values) for key, values in self._metrics[mode].items() if values}
        if mode == "eval":
            averaged = {f"eval_{key}": value for key, value in averaged.items()}
        logs.update(averaged)
        self._metrics[mode].clear()
        super().log(logs, start_time)

    # ---- data and saving -----------------------------------------------------------------------------------------

    def _set_signature_columns_if_needed(self):
        # With remove_unused_columns=True, keep the preference columns (they are not model.forward arguments).
        if self._signature_columns is None:
            self._signature_columns = ["prompt_input_ids", "completion_input_ids", REF_LOGPS_COLUMN]

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """Save only the trainable adapter (at the top of ``output_dir``, as ``load_best_model_at_end`` expects),
        never the frozen reference adapter."""
        model = self.accelerator.unwrap_model(self.model)
        if self.reference_adapter is None or not _is_peft_model(model):
            return super()._save(output_dir, state_dict)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        logger.info("Saving adapter %r to %s", self.policy_adapter, output_dir)
        model.save_pretrained(output_dir, state_dict=state_dict, selected_adapters=[self.policy_adapter])
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))
