"""The four stages end to end with the tiny model: through the .sh launchers, the CLIs and the Python API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import data_interface as di
import inference
import models
import runtime
import sft
import softmax_dpo
from conftest import LASTFM_SAMPLE, REPO

FAST = {"MODEL_NAME": "tiny", "MAX_EVAL_SAMPLES": "8", "BATCH_SIZE": "4", "MAX_STEPS": "4", "EVAL_STEP": "2", "MAX_TRAIN_SAMPLES": "48", "MAX_SAMPLES": "12"}


def run_script(*args, env=None, check=True):
    full_env = {**os.environ, "PYTHON": sys.executable, **(env or {})}
    result = subprocess.run(list(args), cwd=REPO, env=full_env, capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="module")
def launched_run(synthetic_dir, tmp_path_factory):
    """sft.sh -> dpo.sh -> softmax_dpo.sh -> inference.sh -> results.py on synthetic data."""
    root = tmp_path_factory.mktemp("launched")
    env = {**FAST, "DATASET": str(synthetic_dir), "OUTPUT_ROOT": str(root)}
    for script in ("sft.sh", "dpo.sh", "softmax_dpo.sh", "inference.sh"):
        run_script("bash", script, env=env)
    # As the README runs it: the sample (MAX_SAMPLES, SEED) comes from the evaluations' metrics.json.
    run_script(sys.executable, "results.py", "--output_root", str(root), "--dataset", str(synthetic_dir))
    return root


def test_launchers_run_every_stage_and_write_the_results_table(launched_run):
    for method in ("sft", "dpo", "sdpo"):
        checkpoint = launched_run / method / runtime.FINAL_CHECKPOINT
        assert (checkpoint / "adapter_model.safetensors").exists()
        assert (checkpoint / "tokenizer.json").exists()
        info = json.loads((launched_run / method / "run_info.json").read_text())
        assert info["seconds"] > 0
        metrics = json.loads((launched_run / "eval" / method / "metrics.json").read_text())
        assert metrics["n"] == 12 and 0 <= metrics["hr@1"] <= metrics["valid_ratio"] <= 1
        assert 0 <= metrics["hr@1_original"] <= metrics["valid_ratio_original"] <= 1
        lines = (launched_run / "eval" / method / "predictions.jsonl").read_text().splitlines()
        assert len(lines) == 12 and {"output", "prediction", "target", "valid", "hit"} <= set(json.loads(lines[0]))
    base = json.loads((launched_run / "eval" / "base" / "metrics.json").read_text())  # the untrained model
    assert base["checkpoint"] is None and base["n"] == 12
    results = json.loads((launched_run / "results.json").read_text())
    assert set(results) == {"base", "sft", "dpo", "sdpo", "random", "popularity"}
    assert results["random"]["hr@1"] == pytest.approx(0.05)
    assert results["random"]["rank_hr@1"] == pytest.approx(0.05)
    for method in ("base", "sft", "dpo", "sdpo", "popularity"):  # generation and ranking columns in every row
        assert {"hr@1", "valid_ratio", "rank_hr@1", "rank_ndcg@5"} <= set(results[method])
    for method in ("base", "sft", "dpo", "sdpo"):  # and the original release's counting rule beside ours
        assert results[method]["hr@1_original"] == json.loads(
            (launched_run / "eval" / method / "metrics.json").read_text())["hr@1_original"]
    assert all(results[m]["n"] == 12 for m in results)


def test_preference_stages_log_reward_metrics_and_use_their_negative_count(launched_run):
    for method, neg_num in (("dpo", 1), ("sdpo", 3)):
        flags = json.loads((launched_run / method / "run_info.json").read_text())["flags"]
        assert flags["neg_num"] == neg_num
        state = json.loads(next((launched_run / method).glob("checkpoint-*/trainer_state.json")).read_text())
        logged = {key for entry in state["log_history"] for key in entry}
        assert {"rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
                "logps/chosen", "logps/rejected", "eval_loss"} <= logged


def test_a_finished_run_is_not_overwritten_without_the_flag(launched_run, synthetic_dir):
    marker = launched_run / "sft" / runtime.FINAL_CHECKPOINT / "adapter_model.safetensors"
    before = marker.read_bytes()
    result = run_script("bash", "sft.sh", env={**FAST, "DATASET": str(synthetic_dir), "OUTPUT_ROOT": str(launched_run)},
                        check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "--overwrite_output_dir" in result.stderr
    assert marker.read_bytes() == before


def test_sft_lowers_the_loss_and_the_adapter_reloads_to_the_same_outputs(synthetic_dir, tmp_path):
    final = sft.train(model_name="tiny", dataset=str(synthetic_dir), output_dir=str(tmp_path / "sft"),
                      batch_size=8, max_steps=30, eval_step=10, learning_rate=3e-3, max_eval_samples=16)
    state = json.loads((tmp_path / "sft" / "checkpoint-30" / "trainer_state.json").read_text())
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert len(losses) == 3 and losses[-1] < losses[0]

    data = runtime.load_stage_data(("test",), str(synthetic_dir))
    first, tokenizer = inference.load_for_generation("tiny", final, data, seed=0)
    second, _ = inference.load_for_generation("tiny", final, data, seed=0)
    base = models.load_base_model(runtime.base_model_path("tiny", final, data, seed=0))
    prompt = di.build_prompt(data.test[0], data.templates)
    ids = torch.tensor([di.encode_prompt(tokenizer, prompt)])
    with torch.no_grad():
        logits = [model(input_ids=ids).logits for model in (first, second, base)]
    torch.testing.assert_close(logits[0], logits[1])
    assert not torch.allclose(logits[0], logits[2])  # the adapter changed the model


def test_train_on_inputs_teaches_the_prompt_text_too(synthetic_dir, tmp_path):
    """With --train_on_inputs the prompt's tokens carry loss: the same steps lower the prompt's NLL far more."""
    data = runtime.load_stage_data(("train",), str(synthetic_dir))
    prompt_nll = {}
    for train_on_inputs in (False, True):
        out = tmp_path / str(train_on_inputs)
        final = sft.train(model_name="tiny", dataset=str(synthetic_dir), output_dir=str(out), batch_size=8,
                          max_steps=6, eval_step=6, learning_rate=3e-3, max_eval_samples=8, full_finetune=True,
                          train_on_inputs=train_on_inputs)
        run = json.loads((out / "run_info.json").read_text())
        assert run["flags"]["train_on_inputs"] is train_on_inputs
        model, tokenizer = inference.load_for_generation("tiny", final, data, seed=0)
        ids = torch.tensor([di.encode_prompt(tokenizer, di.build_prompt(data.train[0], data.templates))])
        with torch.no_grad():
            prompt_nll[train_on_inputs] = model(input_ids=ids, labels=ids).loss.item()
    assert prompt_nll[True] < prompt_nll[False] - 0.5


def test_shared_sample_runs_a_few_batches_through_every_stage(tmp_path):
    if not LASTFM_SAMPLE.exists():
        pytest.skip(f"{LASTFM_SAMPLE} is absent (../shared is not beside this checkout)")
    files = {"train_file": str(LASTFM_SAMPLE), "val_file": str(LASTFM_SAMPLE)}
    common = {"model_name": "tiny", "batch_size": 4, "max_steps": 2, "eval_step": 2, "max_train_samples": 16,
              "max_eval_samples": 8, **files}
    sft_final = sft.train(output_dir=str(tmp_path / "sft"), **common)
    for method, neg_num in (("dpo", 1), ("sdpo", 3)):
        final = softmax_dpo.train(resume_from_checkpoint=sft_final, output_dir=str(tmp_path / method),
                                  neg_num=neg_num, **common)
        metrics = inference.evaluate(base_model="tiny", resume_from_checkpoint=final, test_file=str(LASTFM_SAMPLE),
                                     output_dir=str(tmp_path / "eval" / method), max_samples=8, batch_size=4)
        assert metrics["n"] == 8


def test_precomputed_reference_and_concat_forward_train_too(synthetic_dir, tmp_path):
    sft_final = sft.train(model_name="tiny", dataset=str(synthetic_dir), output_dir=str(tmp_path / "sft"),
                          batch_size=4, max_steps=2, eval_step=2, max_eval_samples=8)
    for forward, precompute in (("concat", False), ("shared", True)):
        out = tmp_path / f"sdpo-{forward}"
        softmax_dpo.train(model_name="tiny", dataset=str(synthetic_dir), resume_from_checkpoint=sft_final,
                          output_dir=str(out), batch_size=4, max_steps=2, eval_step=2, max_eval_samples=8,
                          forward=forward, precompute_ref_log_probs=precompute)
        assert (out / runtime.FINAL_CHECKPOINT / "adapter_model.safetensors").exists()


# ---------------------------------------------------------------------------------------------
# Bad input: one line naming the problem, before any model is loaded, nothing overwritten


@pytest.fixture()
def no_model_loading(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(models, "load_base_model", refuse)
    monkeypatch.setattr(models, "resolve_model_path", refuse)


def write_split(tmp_path, records, name="bad.json"):
    path = tmp_path / name
    path.write_text(json.dumps(records))
    return str(path)


GOOD = {"historyList": "a::b::c", "itemList": [f"item {i}" for i in range(20)], "trueSelection": "item 3"}


@pytest.mark.parametrize(
    "records, message",
    [
        ({"not": "a list"}, "expected a JSON list of records"),
        ([GOOD, {"itemList": GOOD["itemList"], "trueSelection": "item 3"}], "record 1: missing field 'historyList'"),
        ([{**GOOD, "trueSelection": "item 99"}], "record 0: field 'trueSelection' 'item 99' is not among"),
        ([{**GOOD, "itemList": GOOD["itemList"][:19] + ["item 0"]}], "record 0: field 'itemList' holds duplicate"),
        ([{**GOOD, "historyList": ""}], "record 0: field 'historyList' is empty"),
    ],
)
def test_bad_records_stop_every_stage_before_a_model_loads(tmp_path, no_model_loading, records, message):
    bad = write_split(tmp_path, records)
    good = write_split(tmp_path, [GOOD] * 4, "good.json")
    calls = [
        lambda: sft.train(train_file=bad, val_file=good, output_dir=str(tmp_path / "a")),
        lambda: softmax_dpo.train(train_file=good, val_file=bad, resume_from_checkpoint=str(tmp_path),
                                  output_dir=str(tmp_path / "b")),
        lambda: inference.evaluate(test_file=bad, output_dir=str(tmp_path / "c")),
    ]
    for call in calls:
        with pytest.raises(di.DataError, match=message) as error:
            call()
        assert bad in str(error.value)


def test_other_bad_inputs_are_refused_before_a_model_loads(tmp_path, no_model_loading):
    good = write_split(tmp_path, [GOOD] * 4, "good.json")
    no_placeholder = tmp_path / "prompt.txt"
    no_placeholder.write_text("History: [HistoryHere]\nAnswer:")
    with pytest.raises(di.DataError, match="data file not found"):
        sft.train(train_file=str(tmp_path / "missing.json"), val_file=good, output_dir=str(tmp_path / "a"))
    with pytest.raises(di.DataError, match=r"prompt.txt: template 0 lacks the placeholder \[CansHere\]"):
        sft.train(train_file=good, val_file=good, prompt_path=str(no_placeholder), output_dir=str(tmp_path / "a"))
    with pytest.raises(di.DataError, match="fewer than neg_num=20"):
        softmax_dpo.train(train_file=good, val_file=good, resume_from_checkpoint=str(tmp_path), neg_num=20,
                          output_dir=str(tmp_path / "b"))
    with pytest.raises(runtime.UsageError, match="does not exist"):
        softmax_dpo.train(train_file=good, val_file=good, resume_from_checkpoint=str(tmp_path / "nope"),
                          output_dir=str(tmp_path / "b"))
    with pytest.raises(runtime.UsageError, match="does not exist"):
        inference.evaluate(test_file=good, resume_from_checkpoint=str(tmp_path / "nope"), output_dir=str(tmp_path / "c"))
    finished = tmp_path / "done"
    (finished / "metrics.json").parent.mkdir()
    (finished / "metrics.json").write_text("{}")
    with pytest.raises(runtime.UsageError, match="holds a finished run"):
        inference.evaluate(test_file=good, output_dir=str(finished))
    assert (finished / "metrics.json").read_text() == "{}"


def test_cli_prints_one_error_line_and_exits_1(tmp_path):
    bad = write_split(tmp_path, [{**GOOD, "trueSelection": "nobody"}])
    result = run_script(sys.executable, "inference.py", "--test_file", bad, "--output_dir", str(tmp_path / "out"),
                        check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: {bad}: record 0: field 'trueSelection' 'nobody' is not among the candidates in 'itemList'"
    ]
    assert not (tmp_path / "out").exists()


def test_dpo_is_the_one_negative_case():
    import dpo

    with pytest.raises(runtime.UsageError, match="pairwise baseline"):
        dpo.train(neg_num=3)


def test_sft_resumes_a_killed_run_to_the_same_adapter(synthetic_dir, tmp_path):
    from safetensors.torch import load_file

    common = {"model_name": "tiny", "dataset": str(synthetic_dir), "batch_size": 4, "max_steps": 4, "eval_step": 2,
              "max_eval_samples": 8, "learning_rate": 3e-3}
    whole = sft.train(output_dir=str(tmp_path / "whole"), **common)
    # A run killed after step 2 leaves checkpoint-2 behind; resuming from it finishes the same training.
    resumed = sft.train(output_dir=str(tmp_path / "resumed"), resume_from_checkpoint=str(tmp_path / "whole" / "checkpoint-2"),
                        **common)
    state = json.loads((tmp_path / "resumed" / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    assert not (tmp_path / "resumed" / "checkpoint-2").exists()  # it started at step 2, not from scratch
    # Step 4's own checkpoint, not only the final adapter: that one is the best by eval loss, which could be
    # whole/checkpoint-2 for both runs (the resumed run inherits it), and then the equality would prove nothing.
    for expected_dir, got_dir in ((tmp_path / "whole" / "checkpoint-4", tmp_path / "resumed" / "checkpoint-4"),
                                  (Path(whole), Path(resumed))):
        expected = load_file(f"{expected_dir}/adapter_model.safetensors")
        got = load_file(f"{got_dir}/adapter_model.safetensors")
        assert expected.keys() == got.keys()
        for name in expected:
            torch.testing.assert_close(got[name], expected[name], atol=1e-5, rtol=1e-4)


def test_an_adapter_whose_base_is_missing_is_not_evaluated_on_another_base(synthetic_dir, tmp_path):
    """A LoRA adapter names the base it was trained on. When that folder is not here (moved outputs, another
    working directory), the base is `--base_model`'s only where that is the same model; otherwise a one-line
    error, never a silent evaluation of the adapter on an untrained base."""
    data = runtime.load_stage_data(("train", "val", "test"), str(synthetic_dir))
    tiny = Path(runtime.base_model_path("tiny", None, data, 0))

    def adapter_on(base: str) -> str:
        folder = tmp_path / f"adapter-{len(list(tmp_path.iterdir()))}"
        folder.mkdir()
        (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": base}))
        return str(folder)

    assert runtime.base_model_path("tiny", adapter_on(str(tiny)), data, 0) == str(tiny)
    # The same cached tiny model under another cache root or working directory.
    moved = str(Path("/elsewhere/cache") / tiny.parent.name / tiny.name)
    assert runtime.base_model_path("tiny", adapter_on(moved), data, 0) == str(tiny)
    assert runtime.base_model_path("org/model", adapter_on("org/model"), data, 0) == "org/model"  # a hub id
    # A full SFT model that is not here: --base_model tiny would be an untrained model.
    checkpoint = adapter_on("outputs/sft/final_checkpoint")
    with pytest.raises(runtime.UsageError, match=r"adapter on outputs/sft/final_checkpoint, which is not here") as error:
        runtime.base_model_path("tiny", checkpoint, data, 0)
    assert checkpoint in str(error.value) and "\n" not in str(error.value)
    # Naming a local folder as --base_model is the user's choice of base.
    assert runtime.base_model_path(str(tiny), checkpoint, data, 0) == str(tiny)


def test_fast_evaluator_gives_the_outputs_of_one_prompt_at_a_time(synthetic_dir):
    """Length-sorted batches of a merged adapter = unsorted, unbatched generation with the adapter kept apart."""
    data = runtime.load_stage_data(("train", "val", "test"), str(synthetic_dir))
    base = runtime.base_model_path("tiny", None, data, 0)
    tokenizer = models.load_tokenizer(base)
    config = models.lora_config("tiny")
    config.init_lora_weights = False  # random B as well as A: merging then changes every projection
    torch.manual_seed(0)
    model = models.attach_lora(models.load_base_model(base), config).eval()
    records = data.test[:10]
    slow_metrics, slow = inference.evaluate_records(model, tokenizer, records, data.templates, batch_size=1,
                                                    sort_by_length=False, progress=False)
    lengths = {len(di.encode_prompt(tokenizer, di.build_prompt(r, data.templates))) for r in records}
    assert len(lengths) > 1  # batches really mix prompt lengths, so left padding is exercised
    fast_metrics, fast = inference.evaluate_records(model.merge_and_unload(), tokenizer, records, data.templates,
                                                    batch_size=4, progress=False)
    assert [row["output"] for row in fast] == [row["output"] for row in slow]
    assert any(row["output"] for row in slow)
    assert fast_metrics == slow_metrics


def test_sft_and_sdpo_run_data_parallel_with_two_processes(synthetic_dir, tmp_path):
    """NPROC=2 with SDPO_DEVICE=cpu: the launchers start torchrun (gloo on a CPU); both stages train and save one
    adapter."""
    env = {**FAST, "NPROC": "2", "SDPO_DEVICE": "cpu", "OMP_NUM_THREADS": "1", "DATASET": str(synthetic_dir), "OUTPUT_ROOT": str(tmp_path)}
    for script, stage in (("sft.sh", "sft"), ("softmax_dpo.sh", "sdpo")):
        result = run_script("bash", script, env=env)
        assert "train_loss" in result.stdout + result.stderr
        assert (tmp_path / stage / runtime.FINAL_CHECKPOINT / "adapter_model.safetensors").exists()
        last = max((tmp_path / stage).glob("checkpoint-*"), key=lambda path: int(path.name.split("-")[1]))
        assert json.loads((last / "trainer_state.json").read_text())["global_step"] == int(FAST["MAX_STEPS"])
        for checkpoint in (tmp_path / stage).glob("checkpoint-*"):  # renamed only after both ranks wrote into it
            assert {"rng_state_0.pth", "rng_state_1.pth"} <= {path.name for path in checkpoint.iterdir()}
        assert not list((tmp_path / stage).glob("tmp-*")) and not list((tmp_path / stage).glob("*.tmp"))


@pytest.mark.parametrize("merged", [True, False], ids=["merged", "adapter"])
def test_one_prefill_for_generation_and_ranking_gives_the_separate_results(synthetic_dir, merged):
    """The prompt is encoded once for both: same greedy outputs, same candidate scores (1e-5), same rows."""
    data = runtime.load_stage_data(("train", "val", "test"), str(synthetic_dir))
    base = runtime.base_model_path("tiny", None, data, 0)
    tokenizer = models.load_tokenizer(base)
    config = models.lora_config("tiny")
    config.init_lora_weights = False
    torch.manual_seed(0)
    model = models.attach_lora(models.load_base_model(base), config).eval()
    if merged:
        model = model.merge_and_unload()
    records = data.test[:14]
    prompts = [di.build_prompt(record, data.templates) for record in records]
    assert len({len(di.encode_prompt(tokenizer, prompt)) for prompt in prompts}) > 1  # left padding exercised
    candidates = [record.candidates for record in records]
    outputs = inference.generate_outputs(model, tokenizer, prompts, 4, progress=False)
    scores = inference.score_candidates(model, tokenizer, prompts, candidates, 4, progress=False)
    shared_outputs, shared_scores = inference.generate_and_score(model, tokenizer, prompts, candidates, 4,
                                                                 progress=False)
    assert shared_outputs == outputs and any(outputs)
    torch.testing.assert_close(torch.tensor(shared_scores), torch.tensor(scores), atol=1e-5, rtol=1e-5)
    separate = inference.evaluate_records(model, tokenizer, records, data.templates, batch_size=4, progress=False,
                                          shared_prefill=False)
    shared = inference.evaluate_records(model, tokenizer, records, data.templates, batch_size=4, progress=False)
    assert shared[0] == separate[0] and shared[1] == separate[1]


def test_quickstart_runs_every_stage_and_ends_in_the_results_table(synthetic_dir, tmp_path):
    """`bash quickstart.sh` with its step counts cut down: the recipe's SFT flags reach sft.py, every stage runs,
    and it ends with the table of trained rows beside random and popularity."""
    env = {"DATASET": str(synthetic_dir), "OUTPUT_ROOT": str(tmp_path), "SFT_STEPS": "3", "PREFERENCE_STEPS": "2",
           "MAX_SAMPLES": "12", "OMP_NUM_THREADS": "1"}
    result = run_script("bash", "quickstart.sh", env=env)
    assert "quick start finished in" in result.stdout and "rankHR@1" in result.stdout
    flags = json.loads((tmp_path / "sft" / "run_info.json").read_text())["flags"]
    assert flags["item_embeddings"] == "sasrec" and flags["tie_word_embeddings"] is True and flags["max_steps"] == 3
    assert flags["train_on_inputs"] is False  # sft.sh passes TRAIN_ON_INPUTS, the paper's completion-only loss
    for stage in ("dpo", "sdpo"):  # the preference stages train the whole SFT model (FULL_FINETUNE=True)
        stage_flags = json.loads((tmp_path / stage / "run_info.json").read_text())["flags"]
        assert stage_flags["full_finetune"] is True and stage_flags["max_steps"] == 2, stage
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results) == {"base", "sft", "dpo", "sdpo", "random", "popularity"}
    assert all(results[method]["n"] == 12 and "rank_hr@1" in results[method] for method in ("sft", "dpo", "sdpo"))


@pytest.mark.parametrize("name, expected", [
    ("movielens", "-m data.prepare --dataset movielens --raw_dir"),
    ("movielens-original", "-m data.prepare --dataset movielens --candidates original --raw_dir"),
    ("goodreads-original", "-m data.prepare --dataset goodreads --candidates original"),
])
def test_launchers_prepare_a_dataset_with_the_candidates_its_name_asks_for(tmp_path, name, expected):
    """common.sh's ensure_dataset: NAME-original is NAME with the original code's candidates. A stand-in
    Python records the command (nothing is prepared in the checkout)."""
    log = tmp_path / "calls"
    stand_in = tmp_path / "python"
    stand_in.write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    stand_in.chmod(0o755)
    raw = {"movielens": "ml-100k", "goodreads": "goodreads"}[name.split("-")[0]]
    local_raw = (REPO.parent / "shared" / "data" / "raw" / raw).is_dir()
    run_script("bash", "-c", f"set -euo pipefail; source common.sh; ensure_dataset {name}",  # as reproduce.sh runs it
               env={"PYTHON": str(stand_in), "NPROC": "1", "SDPO_RAW_DIR": ""})
    if (REPO / "data" / name / "train.json").exists():  # prepared in this checkout already: nothing to do
        assert not log.exists()
        return
    call = log.read_text().strip().splitlines()[-1]
    assert call.startswith(expected.replace(" --raw_dir", "") if not local_raw else expected), call
