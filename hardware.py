"""What the machine offers a run, decided in one place and said out loud.

- the compute device: CUDA when torch can use it, else the CPU; never a silent fallback (a machine with NVIDIA
  GPUs that torch cannot use, several processes or a large model without CUDA stop with one line, unless the
  CPU is asked for with ``SDPO_DEVICE=cpu``);
- the compute dtype: bf16 where the device has it, else fp16 on CUDA (V100, T4) with a notice;
- the number of processes and the gradient accumulation that keeps the effective batch (the paper's 128);
- one GPU per process (a single process on a multi-GPU machine would otherwise get ``nn.DataParallel``);
- what Triton needs to compile trl's fused LM head on CUDA (a C compiler and the Python headers).
"""

from __future__ import annotations

import logging
import os
import shutil
import sysconfig
from pathlib import Path

import torch

logger = logging.getLogger("sdpo.hardware")

DEVICE_ENV = "SDPO_DEVICE"  # auto (CUDA when usable) | cuda | cpu
DEVICE_CHOICES = ("auto", "cuda", "cpu")
# Above this many parameters a model on the CPU is a mistake unless asked for (a 7B model in fp32 is 28 GB a copy).
LARGE_MODEL_PARAMETERS = 1_000_000_000


class DeviceError(RuntimeError):
    """The run cannot use the device it needs; the message is one line naming the cause and the fix."""


def requested_device() -> str:
    value = os.environ.get(DEVICE_ENV, "auto").strip().lower() or "auto"
    if value not in DEVICE_CHOICES:
        raise DeviceError(f"{DEVICE_ENV}={value!r}: must be one of {', '.join(DEVICE_CHOICES)}")
    return value


def nvidia_gpus_present() -> bool:
    """True when the NVIDIA driver reports a GPU, whether or not torch can use it."""
    gpus = Path("/proc/driver/nvidia/gpus")
    return (gpus.is_dir() and any(gpus.iterdir())) or any(Path("/dev").glob("nvidia[0-9]*"))


def world_size() -> int:
    """Processes of this launch (torchrun / accelerate set WORLD_SIZE; 1 otherwise)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def compute_device() -> str:
    """`cuda` or `cpu`, or a `DeviceError` where the CPU would be a silent fallback."""
    requested = requested_device()
    if requested == "cpu":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    build = f"torch {torch.__version__}, CUDA build: {torch.version.cuda or 'none (a CPU wheel)'}"
    if requested == "cuda":
        raise DeviceError(f"{DEVICE_ENV}=cuda but torch cannot use CUDA ({build}): install the CUDA build of torch "
                          "that matches the driver (README, Running on GPUs)")
    if nvidia_gpus_present():
        raise DeviceError(f"this machine has NVIDIA GPUs but torch cannot use them ({build}): install the CUDA build "
                          f"of torch that matches the driver (README, Running on GPUs), or set {DEVICE_ENV}=cpu to "
                          "run on the CPU")
    if world_size() > 1:
        raise DeviceError(f"{world_size()} processes were started but torch has no CUDA device: run one process, or "
                          f"set {DEVICE_ENV}=cpu to run them data-parallel on the CPU (gloo)")
    return "cpu"


def estimated_parameters(config) -> int:
    """Parameters of a decoder-only transformer from its config (embeddings, attention, MLP, head)."""
    hidden, layers = config.hidden_size, config.num_hidden_layers
    intermediate = getattr(config, "intermediate_size", 4 * hidden)
    heads = 1 if getattr(config, "tie_word_embeddings", False) else 2
    return config.vocab_size * hidden * heads + layers * (4 * hidden * hidden + 3 * hidden * intermediate)


def check_model_fits_device(path: str, device: str) -> None:
    """Refuse a large model on the CPU unless the CPU was asked for (`SDPO_DEVICE=cpu`)."""
    if device != "cpu" or requested_device() == "cpu":
        return
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path)
        parameters = estimated_parameters(config)
    except (OSError, ValueError, AttributeError):
        return  # no readable config: the loader says what is wrong
    if parameters > LARGE_MODEL_PARAMETERS:
        raise DeviceError(f"{path}: about {parameters / 1e9:.1f}B parameters and no CUDA device; run it on GPUs, or "
                          f"set {DEVICE_ENV}=cpu to load it on the CPU anyway (fp32: {4 * parameters / 2**30:.0f} GiB "
                          "per process)")


def bf16_supported(device: str) -> bool:
    """Native bf16: on CUDA compute capability 8.0+ (A100, H100, RTX 30xx+); on a CPU AVX512-BF16 or AMX-BF16
    (elsewhere bf16 is emulated and slower than fp32)."""
    if device == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


_NOTICES: set[str] = set()


def _notice_once(message: str) -> None:
    if message not in _NOTICES:
        _NOTICES.add(message)
        logger.warning(message)


def half_dtype(device: str) -> torch.dtype:
    """The 16-bit compute dtype: bf16 where supported, else fp16 on CUDA (with a one-line notice) and bf16 on a
    CPU (the only half type bitsandbytes' CPU kernels take)."""
    if device == "cuda" and torch.cuda.is_available() and not bf16_supported("cuda"):
        _notice_once(f"{torch.cuda.get_device_name()} has no bf16: computing in fp16 (the paper used bf16)")
        return torch.float16
    return torch.bfloat16


def default_process_count() -> int:
    """One process per visible GPU (CUDA_VISIBLE_DEVICES counts); 1 without CUDA."""
    if requested_device() == "cpu" or not torch.cuda.is_available():
        return 1
    return max(1, torch.cuda.device_count())


def gradient_accumulation_for(effective_batch_size: int, batch_size: int, processes: int) -> int:
    """The accumulation steps that make `batch_size x steps x processes == effective_batch_size`."""
    per_step = batch_size * processes
    if effective_batch_size < 1 or batch_size < 1 or processes < 1 or effective_batch_size % per_step:
        raise DeviceError(f"an effective batch of {effective_batch_size} cannot be split into {processes} processes "
                          f"x batch {batch_size} x a whole number of accumulation steps: change --batch_size or "
                          "the number of processes (NPROC)")
    return effective_batch_size // per_step


def limit_to_one_gpu(trainer) -> None:
    """A single process uses one GPU: transformers would wrap the model in `nn.DataParallel` over every visible
    GPU, multiplying the batch (and the memory on GPU 0) without a word. The Trainer took its batch
    (`args.train_batch_size`, per device x GPUs) when it was built, so that is set again too."""
    arguments = trainer.args
    if world_size() == 1 and arguments.n_gpu > 1:
        logger.warning("one process on a machine with %d GPUs: it uses GPU 0 only; start one process per GPU with "
                       "NPROC=%d (torchrun) to use them all", arguments.n_gpu, arguments.n_gpu)
        arguments._n_gpu = 1
        trainer._train_batch_size = arguments.train_batch_size


def triton_toolchain_problem() -> str | None:
    """What Triton lacks to compile kernels at run time (a C compiler, the Python headers), or None."""
    candidates = [os.environ["CC"]] if os.environ.get("CC") else ["cc", "gcc", "clang"]
    if not any(shutil.which(compiler) for compiler in candidates):
        return "no C compiler (apt-get install gcc, or set CC)"
    header = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not header.exists():
        return f"no Python headers ({header} is missing: apt-get install python3-dev)"
    return None


def prepare_fused_lm_head(device: str) -> None:
    """On CUDA, trl's SFT computes log-probs with a Triton kernel compiled at the first step. Without a compiler
    or the Python headers it dies there; use trl's torch implementation of the same kernel instead (same loss,
    slower) and say what to install."""
    if device != "cuda":
        return
    import trl.kernels.chunked_logprob as chunked

    if not chunked._TRITON_AVAILABLE:
        return
    problem = triton_toolchain_problem()
    if problem is not None:
        _notice_once(f"Triton cannot compile trl's fused LM head: {problem}; SFT uses its torch implementation "
                     "(same loss, slower)")
        chunked._use_triton = lambda device: False
