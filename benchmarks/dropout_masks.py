"""Effect of the LoRA-dropout mask layout on S-DPO gradients (docs/differences.md): shared (one mask for the
prompt) vs concat (one per copy), 10 masks, random tiny LLaMA with LoRA r=8. Run from the repository root:
``python -m benchmarks.dropout_masks`` (or ``python benchmarks/dropout_masks.py``)."""
if __name__ == "__main__" and not __package__:  # `python benchmarks/dropout_masks.py`: run it as the module it is
    import os
    import sys
    from pathlib import Path

    _repo = str(Path(__file__).resolve().parents[1])
    _path = os.pathsep.join(p for p in (_repo, os.environ.get("PYTHONPATH")) if p)
    command = [sys.executable, "-m", "benchmarks.dropout_masks", *sys.argv[1:]]
    os.execve(sys.executable, command, {**os.environ, "PYTHONPATH": _path})

import statistics

import torch

torch.set_num_threads(1)
from peft import LoraConfig, get_peft_model
from tests.test_shared_forward import tiny_llama, random_rows, batch_of
from trainer.log_probs import completion_logps
from trainer.softmax_dpo_trainer import sdpo_loss

def model_with(dropout):
    m = tiny_llama()
    cfg = LoraConfig(r=8, lora_alpha=32, lora_dropout=dropout, target_modules=["q_proj","k_proj","v_proj","o_proj","gate_proj","up_proj","down_proj"], init_lora_weights=False)
    return get_peft_model(m, cfg).train()

batch = batch_of(random_rows(prompt_lengths=(60, 45, 70, 50), num_completions=4, seed=5))
def grad(model, forward, seed):
    torch.manual_seed(seed)
    model.zero_grad(set_to_none=True)
    logps = completion_logps(model, *batch, forward=forward)
    ref = logps.detach() - 0.5
    loss = sdpo_loss(logps[:, 0], logps[:, 1:], ref[:, 0], ref[:, 1:], beta=1.0)[0].mean()
    loss.backward()
    return loss.item(), torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])

cos = lambda a, b: torch.nn.functional.cosine_similarity(a, b, dim=0).item()
m0 = model_with(0.0)
_, g_exact = grad(m0, "concat", 0)
m = model_with(0.1)
res = {"shared": [], "concat": []}
losses = {"shared": [], "concat": []}
for seed in range(10):
    for f in ("shared", "concat"):
        l, g = grad(m, f, seed); res[f].append(g); losses[f].append(l)
print("dropout 0: shared == concat (see tests); loss", grad(m0, "shared", 0)[0], grad(m0, "concat", 0)[0])
for f in ("shared", "concat"):
    print(f, "loss mean %.4f sd %.4f" % (statistics.mean(losses[f]), statistics.stdev(losses[f])),
          "cos(grad, no-dropout grad) mean %.3f" % statistics.mean(cos(g, g_exact) for g in res[f]))
mean_s = torch.stack(res["shared"]).mean(0); mean_c = torch.stack(res["concat"]).mean(0)
print("cos(mean shared grad, mean concat grad) over 10 masks: %.4f" % cos(mean_s, mean_c))
print("cos between two concat draws: %.3f; shared vs concat same seed: %.3f" % (cos(res["concat"][0], res["concat"][1]), cos(res["shared"][0], res["concat"][0])))
