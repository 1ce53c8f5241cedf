"""The results matrix (reproduce.py): a smoke run end to end, resuming after kill -9, the paper's commands."""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import baselines.train
import dpo
import inference
import reproduce
import runtime
import sft
import softmax_dpo

REPO = Path(__file__).resolve().parents[1]
STAGE_FUNCTIONS = {"sft.py": sft.train, "dpo.py": dpo.train, "softmax_dpo.py": softmax_dpo.train,
                   "inference.py": inference.evaluate, "baselines": baselines.train.run}


@pytest.fixture(scope="module")
def smoke_run(synthetic_dir, tmp_path_factory):
    """`reproduce.py --profile smoke` on the synthetic data, in a subprocess as a user runs it."""
    root = tmp_path_factory.mktemp("reproduce")
    jobs = min(2, len(os.sched_getaffinity(0)))  # two workers sharing the matrix where there are two CPUs
    command = [sys.executable, "reproduce.py", "--profile", "smoke", "--dataset", str(synthetic_dir),
               "--output_root", str(root / "outputs"), "--results_dir", str(root / "results"), f"--jobs={jobs}"]
    dirty = reproduce.git_dirty()  # what every record of this run must say
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert reproduce.git_dirty() == dirty, "the checkout changed while the smoke run ran: its records are ambiguous"
    return root, command, result.stdout, dirty


def test_smoke_profile_writes_the_table_results_and_figures(smoke_run, synthetic_dir):
    root, _, stdout, dirty = smoke_run
    folder = root / "results" / synthetic_dir.name / "tiny"
    table = (folder / "table.md").read_text()
    for row in ("| random |", "| popularity |", "| gru4rec |", "| sasrec |", "| base (untrained) |", "| SFT |", "| DPO |",
                "| S-DPO (N=3) |"):
        assert row in table and row in stdout
    assert "Cells finished: 10 of 10" in table
    assert {"hr1_vs_negatives.png", "hr1_vs_beta.png", "training_curves.png"} <= {p.name for p in folder.glob("*.png")}
    for png in folder.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = json.loads((folder / "results.json").read_text())
    assert results["eval_records"] == 24 and results["cells_missing"] == []
    assert results["references"]["gru4rec"]["n"] == 24 and results["references"]["gru4rec"]["epochs"] == 2
    sdpo = results["runs"]["sdpo-n3-b1-s0"]
    assert sdpo["info"] == {"method": "sdpo", "seed": 0, "negatives": 3, "beta": 1.0}
    assert sdpo["config"]["neg_num"] == 3 and sdpo["config"]["beta"] == 1.0  # what the stage itself recorded
    assert sdpo["metrics"]["n"] == 24 and 0 <= sdpo["metrics"]["rank_hr@1"] <= 1
    assert sdpo["train_seconds"] > 0 and len(sdpo["git_commit"]) >= 7
    assert any("rewards/margins" in entry for entry in sdpo["log_history"])
    differences = {c["comparison"]: c for c in results["paired_differences"]}
    assert set(differences) == {"S-DPO (N=3) − DPO", "DPO − SFT", "S-DPO (N=3) − SFT", "SFT − base (untrained)",
                                "S-DPO (N=3) − popularity"} and "| S-DPO (N=3) − DPO |" in table
    dpo_hr = results["runs"]["dpo-n1-b1-s0"]["metrics"]["rank_hr@1"]
    assert differences["S-DPO (N=3) − DPO"]["mean"] == pytest.approx(sdpo["metrics"]["rank_hr@1"] - dpo_hr)
    assert "hits" not in results  # per-prompt data stays out of results.json: in per_prompt.csv.gz beside it
    # Provenance: every run and baseline row with its commit and whether the tree had uncommitted changes.
    commit = reproduce.git_commit()
    for run in results["runs"].values():
        assert run["git_commit"] == commit and run.get("git_dirty") is dirty  # None (absent) outside a git checkout
    gru4rec = results["references"]["gru4rec"]
    assert gru4rec["git_commit"] == commit and gru4rec.get("git_dirty") is dirty
    assert "baselines" in gru4rec["command"] and "--model" in gru4rec["command"]
    assert results["report_commit"] == commit and results["report_git_dirty"] is dirty
    assert table.startswith("# tiny on") and ("**Uncommitted changes:**" in table.split("Evaluation:")[0]) == dirty
    # How the test prompts' negatives were drawn, read from the data folder (the synthetic data: per sample).
    assert results["candidates"] == "synthetic" and f"Candidates: {reproduce.CANDIDATE_NOTES['synthetic']}." in table
    # The whole run's wall time: this one call, which ran every cell.
    [call] = results["reproduce_calls"]
    assert call["cells_run"] == call["cells"] == results["cells_total"] == 10 and results["report_only"] is False
    assert results["run_seconds"] > 0 and results["wall_seconds_of_cells"] > 0 and results["run_started_at"]
    assert f"Run wall time: {results['run_seconds'] / 60:.1f} min in 1 call of reproduce.py" in table
    assert "(cells run: 10 of 10)." in table
    # Every evaluation's per-prompt ranks are kept: the metrics and the prompt SEs recompute from them.
    columns = reproduce.read_per_prompt(folder / reproduce.PER_PROMPT_FILE)
    assert len(columns["index"]) == 24 and len(set(columns["index"])) == 24
    for name in ("popularity", "gru4rec", "base", "sft-s0", "dpo-n1-b1-s0", "sdpo-n3-b1-s0", "sdpo-n3-b2-s0"):
        hits = [rank == 1 for rank in columns[f"rank/{name}"]]
        metrics = results["references"].get(name) or results["runs"][name]["metrics"]
        assert sum(hits) / 24 == pytest.approx(metrics["rank_hr@1"])
    assert sum(columns["gen_hit/sdpo-n3-b1-s0"]) / 24 == pytest.approx(sdpo["metrics"]["hr@1"])
    for metric, name in reproduce.DIFFERENCES_KEY.items():
        recomputed = reproduce.recompute_paired_differences(folder, metric)
        assert [c["comparison"] for c in recomputed] == [c["comparison"] for c in results[name]]
        for again, stored in zip(recomputed, results[name]):
            for key in ("mean", "std", "prompt_se", "per_seed", "ahead", "n"):
                assert again[key] == pytest.approx(stored[key]), (stored["comparison"], key)
    # The paper's metric gets its own paired differences (no popularity row: it does not generate).
    generation = {c["comparison"]: c for c in results["paired_differences_generation"]}
    assert "S-DPO (N=3) − DPO" in generation and "S-DPO (N=3) − popularity" not in generation
    assert generation["S-DPO (N=3) − DPO"]["mean"] == pytest.approx(
        (sum(columns["gen_hit/sdpo-n3-b1-s0"]) - sum(columns["gen_hit/dpo-n1-b1-s0"])) / 24)
    assert "| A − B (generation HR@1) |" in table
    # Every row is evaluated on the same prompts: the reference rows' sample.
    csv_lines = (folder / "table.csv").read_text().splitlines()
    assert csv_lines[0].startswith("method,seeds,n,hr@1_mean") and len(csv_lines) == 1 + 8
    assert all(line.split(",")[2] == "24" for line in csv_lines[1:])


def test_a_rerun_skips_finished_cells_and_reruns_a_removed_one(smoke_run, synthetic_dir):
    root, command, _, _ = smoke_run
    cells = root / "outputs" / "smoke"
    records = next(cells.glob("*/tiny/cells"))
    before = {path.name: path.stat().st_mtime_ns for path in records.glob("*.json")}
    (records / "eval-dpo-n1-b1-s0.json").unlink()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    after = {path.name: path.stat().st_mtime_ns for path in records.glob("*.json")}
    assert set(after) == set(before)
    changed = {name for name in after if after[name] != before.get(name)}
    assert changed == {"eval-dpo-n1-b1-s0.json"}
    assert "[6/10] eval-dpo-n1-b1-s0" in result.stderr and "[1/10]" not in result.stderr
    # The run's wall time is now that of both calls: the first made 9 of the current cells, the second one.
    folder = root / "results" / synthetic_dir.name / "tiny"
    results = json.loads((folder / "results.json").read_text())
    assert [call["cells_run"] for call in results["reproduce_calls"]] == [9, 1]
    assert json.loads((records / "eval-dpo-n1-b1-s0.json").read_text())["call"] == results["reproduce_calls"][1]["id"]
    assert results["run_seconds"] == pytest.approx(sum(call["seconds"] for call in results["reproduce_calls"]), abs=1)
    assert "(cells run: 9 + 1 of 10)." in (folder / "table.md").read_text()


def test_report_only_keeps_the_run_wall_time_and_says_so(smoke_run, synthetic_dir):
    root, command, _, _ = smoke_run
    folder = root / "results" / synthetic_dir.name / "tiny"
    before = json.loads((folder / "results.json").read_text())
    reproduce.reproduce(profile="smoke", dataset=str(synthetic_dir), output_root=str(root / "outputs"),
                        results_dir=str(root / "results"), report_only=True)
    after = json.loads((folder / "results.json").read_text())
    assert after["reproduce_calls"] == before["reproduce_calls"] and after["run_seconds"] == before["run_seconds"]
    assert after["report_only"] is True and "rewritten later with `--report_only`" in (folder / "table.md").read_text()


def test_a_report_drops_an_earlier_call_whose_cells_were_all_run_again(smoke_run, synthetic_dir):
    """A call listed in results.json during which no current cell finished (its cells were replaced since) is
    dropped from the run's calls and wall time; the calls that made the current cells stay."""
    root, _, _, _ = smoke_run
    folder = root / "results" / synthetic_dir.name / "tiny"
    before = json.loads((folder / "results.json").read_text())
    stale = dict(before["reproduce_calls"][0], started_at="2020-01-01 00:00:00 UTC", seconds=60.0, cells_run=3)
    (folder / "results.json").write_text(json.dumps({**before, "reproduce_calls": [stale, *before["reproduce_calls"]]}))
    reproduce.reproduce(profile="smoke", dataset=str(synthetic_dir), output_root=str(root / "outputs"),
                        results_dir=str(root / "results"), report_only=True)
    after = json.loads((folder / "results.json").read_text())
    assert after["reproduce_calls"] == before["reproduce_calls"] and after["run_seconds"] == before["run_seconds"]


def test_git_dirty_counts_tracked_files_only(tmp_path):
    assert reproduce.git_dirty(tmp_path) is None  # not a checkout
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "a.py").write_text("x = 1\n")
    subprocess.run([*git, "add", "a.py"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-qm", "a"], cwd=tmp_path, check=True)
    assert reproduce.git_dirty(tmp_path) is False
    (tmp_path / "outputs.log").write_text("untracked\n")  # outputs, data, .venv: not the code
    assert reproduce.git_dirty(tmp_path) is False
    (tmp_path / "a.py").write_text("x = 2\n")
    assert reproduce.git_state(tmp_path) == {"git_commit": reproduce.git_commit(tmp_path), "git_dirty": True}


def _payload(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())


def test_a_run_from_a_dirty_tree_is_named_at_the_top_of_the_table(smoke_run, synthetic_dir):
    payload = _payload(smoke_run[0] / "results" / synthetic_dir.name / "tiny")
    for run in payload["runs"].values():
        run["git_dirty"] = False
    payload["references"]["gru4rec"]["git_dirty"] = payload["references"]["sasrec"]["git_dirty"] = False
    payload["report_git_dirty"] = False
    clean = reproduce.format_report(payload)
    assert "Uncommitted changes:**" not in clean and "uncommitted changes: none." in clean
    payload["runs"]["dpo-n1-b1-s0"]["git_dirty"] = True
    top = reproduce.format_report(payload).split("Evaluation:")[0]
    assert "**Uncommitted changes:** run(s) dpo-n1-b1-s0 came from a tree" in top
    for run in payload["runs"].values():  # a results.json from before git_dirty and the run's wall time
        del run["git_dirty"]
    for key in ("reproduce_calls", "run_seconds", "per_prompt_file"):
        del payload[key]
    old = reproduce.format_report(payload)
    assert "uncommitted changes: not recorded for 5 of 7" in old and "Run wall time: not recorded" in old
    assert "per-prompt ranks: not recorded" in old


def test_figures_label_their_axes_and_say_what_the_error_bars_are(smoke_run, synthetic_dir):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    payload = _payload(smoke_run[0] / "results" / synthetic_dir.name / "tiny")
    figures = [reproduce.sweep_figure(payload, "negatives"), reproduce.sweep_figure(payload, "beta"),
               reproduce.curves_figure(payload)]
    for figure in figures:
        for ax in figure.axes:
            assert ax.get_xlabel() and ax.get_ylabel()
    assert "fraction of test prompts" in figures[0].axes[0].get_ylabel()
    assert all("nats" in ax.get_ylabel() and ax.get_xlabel() == "training step" for ax in figures[2].axes)
    legend = [text.get_text() for text in figures[0].axes[0].get_legend().get_texts()]
    assert "seed 0 at every point (n=1 each)" in legend  # the smoke profile has one seed: no error bars to explain
    assert any("one seed" in text.get_text() for text in figures[2].axes[0].get_legend().get_texts())
    # A point with more seeds than the others (Table 1's rows in the cpu profile) gets mean ± std, labelled.
    extra = json.loads(json.dumps(payload["runs"]["dpo-n1-b1-s0"]))
    extra["info"]["seed"], extra["metrics"]["rank_hr@1"] = 1, extra["metrics"]["rank_hr@1"] + 0.05
    payload["runs"]["dpo-n1-b1-s1"] = extra
    figure = reproduce.sweep_figure(payload, "negatives")
    legend = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    assert "seed 0 at every point (n=1 each)" in legend
    assert "mean over n seeds; error bar: ± 1 std over seeds" in legend
    assert "n=2" in [text.get_text() for text in figure.axes[0].texts]
    other = json.loads(json.dumps(payload["runs"]["sdpo-n3-b1-s0"]))  # now every point has seeds 0 and 1
    other["info"]["seed"] = 1
    payload["runs"]["sdpo-n3-b1-s1"] = other
    shared = reproduce.sweep_figure(payload, "negatives")
    legend = [text.get_text() for text in shared.axes[0].get_legend().get_texts()]
    assert "mean of seeds 0, 1 at every point (n=2 each); error bar: ± 1 std over seeds" in legend
    for figure in [*figures, figure, shared]:
        plt.close(figure)


def _sleep_cells(root: Path, count: int) -> list[reproduce.Cell]:
    """Cells whose command appends its name to a file, then sleeps: cheap stand-ins for stage runs."""
    script = ("import sys, time; open(sys.argv[1], 'a').write(sys.argv[2] + '\\n'); time.sleep(float(sys.argv[3]))")
    return [reproduce.Cell(f"c{i}", "sft", [sys.executable, "-c", script, str(root / "started.txt"), f"c{i}", "1.5"],
                           root / f"c{i}") for i in range(count)]


def test_kill_9_loses_only_the_cell_in_progress_and_kills_its_child(tmp_path):
    harness = ("import sys; import tests.test_reproduce as t, reproduce; "
               f"from pathlib import Path; root = Path({str(tmp_path)!r}); "
               "sys.exit(len(reproduce.run_cells(t._sleep_cells(root, 4), root)))")
    process = subprocess.Popen([sys.executable, "-c", harness], cwd=REPO)
    records = tmp_path / "cells"
    deadline = time.time() + 120
    while not (records / "c1.json").exists():  # wait until two cells are done and the third has started
        assert time.time() < deadline and process.poll() is None
        time.sleep(0.1)
    while len((tmp_path / "started.txt").read_text().split()) < 3:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    time.sleep(2.5)  # long enough for an orphaned c2 to have finished and written a record
    assert sorted(path.name for path in records.glob("*.json")) == ["c0.json", "c1.json"]
    assert not list(records.glob("*.tmp"))
    # The rerun runs c2 (again) and c3, and nothing that had finished.
    assert reproduce.run_cells(_sleep_cells(tmp_path, 4), tmp_path) == []
    assert (tmp_path / "started.txt").read_text().split() == ["c0", "c1", "c2", "c2", "c3"]


def test_a_failing_cell_skips_its_dependants_and_the_rest_goes_on(tmp_path):
    fail = reproduce.Cell("bad", "sft", [sys.executable, "-c", "raise SystemExit('boom: bad flag')"], tmp_path / "bad")
    child = reproduce.Cell("child", "eval", [sys.executable, "-c", "pass"], tmp_path / "child", needs=("bad",))
    other = reproduce.Cell("other", "eval", [sys.executable, "-c", "pass"], tmp_path / "other")
    assert reproduce.run_cells([fail, child, other], tmp_path) == ["bad", "child"]
    assert (tmp_path / "cells" / "other.json").exists() and not (tmp_path / "cells" / "bad.json").exists()
    assert "boom: bad flag" in (tmp_path / "logs" / "bad.log").read_text()


def _timed_cells(root: Path, needs: dict[str, tuple[str, ...]], seconds: float = 1.0) -> list[reproduce.Cell]:
    """Cells that append `name start end pid` to root/times.txt around a sleep."""
    script = ("import os, sys, time; start = time.time(); time.sleep(float(sys.argv[3])); "
              "open(sys.argv[1], 'a').write(f'{sys.argv[2]} {start} {time.time()} {os.getppid()}\\n')")
    return [reproduce.Cell(name, "sft", [sys.executable, "-c", script, str(root / "times.txt"), name, str(seconds)],
                           root / name, needs=need) for name, need in needs.items()]


def test_two_harness_processes_share_a_matrix_each_cell_once_and_in_dependency_order(tmp_path):
    """What `--jobs 2` does: two run_cells processes on one root. Every cell runs exactly once, both
    processes take cells, and a cell starts only after the cells it needs have finished, even when another
    process ran them."""
    needs = {"a": (), "b": (), "c": ("a", "b"), "d": ("c",), "e": (), "f": ("d",)}
    harness = ("import sys; import tests.test_reproduce as t, reproduce; "
               f"from pathlib import Path; root = Path({str(tmp_path)!r}); "
               f"sys.exit(len(reproduce.run_cells(t._timed_cells(root, {needs!r}), root, poll_seconds=0.1, "
               "call=f'call {os.getpid()}')))")
    harness = "import os; " + harness
    processes = [subprocess.Popen([sys.executable, "-c", harness], cwd=REPO) for _ in range(2)]
    assert [process.wait(timeout=120) for process in processes] == [0, 0]
    lines = [line.split() for line in (tmp_path / "times.txt").read_text().splitlines()]
    assert sorted(name for name, *_ in lines) == sorted(needs)  # each once
    times = {name: (float(start), float(end)) for name, start, end, _ in lines}
    for name, required in needs.items():
        for need in required:
            assert times[name][0] >= times[need][1], f"{name} started before {need} ended"
    assert len({pid for *_, pid in lines}) == 2  # both processes ran cells
    assert sorted(path.name for path in (tmp_path / "cells").glob("*.json")) == [f"{n}.json" for n in sorted(needs)]
    for name, *_, pid in lines:  # each record names the process (call) that ran it, not the other one
        assert json.loads((tmp_path / "cells" / f"{name}.json").read_text())["call"] == f"call {pid}"


def _call(started_at: str, seconds: float, cells_run: int, **extra) -> dict:
    return {"started_at": f"2026-12-06 {started_at} UTC", "seconds": seconds, "cells_run": cells_run, **extra}


def test_the_run_wall_time_counts_overlapping_calls_once():
    one, two = _call("10:00:00", 600.0, 5), _call("10:05:00", 600.0, 4)  # the second starts halfway through
    assert reproduce.calls_wall_seconds([one, two]) == 900.0
    assert reproduce.calls_wall_seconds([_call("10:00:00", 1200.0, 5), two]) == 1200.0  # inside the first
    later = _call("10:10:00", 60.0, 1)  # starts when the first ends (start times are whole seconds)
    assert reproduce.calls_wall_seconds([later, one]) == 660.0
    assert reproduce.calls_wall_seconds([one, _call("10:09:59", 60.0, 1)]) == 660.0  # rounding: not an overlap


def test_each_call_counts_only_the_cells_whose_records_name_it():
    calls = [_call("10:00:00", 600.0, 9, id="a"), _call("10:05:00", 600.0, 9, id="b"), _call("09:00:00", 60.0, 2)]
    records = [{"call": "a"}] * 5 + [{"call": "b"}] * 4 + [{}]
    assert [call["cells_run"] for call in reproduce._count_cells_per_call(calls, records)] == [5, 4, 2]
    assert reproduce._count_cells_per_call(calls, [{}, {}]) == calls  # records from before calls had ids


def test_the_wall_time_line_of_overlapping_calls_says_they_overlapped(smoke_run, synthetic_dir):
    root, _, _, _ = smoke_run
    payload = json.loads((root / "results" / synthetic_dir.name / "tiny" / "results.json").read_text())
    payload["cells_missing"], payload["report_only"] = [], False
    payload["reproduce_calls"] = [_call("10:00:00", 600.0, 6, id="a"), _call("10:05:00", 600.0, 4, id="b")]
    payload["run_seconds"] = reproduce.calls_wall_seconds(payload["reproduce_calls"])
    line = next(line for line in reproduce.format_report(payload).splitlines() if line.startswith("Run wall time"))
    assert line == ("Run wall time: 15.0 min in 2 calls of reproduce.py from 2026-12-06 10:00:00 UTC (cells run: "
                    "6 + 4 of 10); the calls ran partly at once (their own durations add up to 20.0 min).")
    for call in payload["reproduce_calls"]:  # calls recorded before records named their call
        del call["id"]
    line = next(line for line in reproduce.format_report(payload).splitlines() if line.startswith("Run wall time"))
    assert "(cells finished during each call: 6 + 4 of 10); the calls ran partly at once" in line
    assert "so a cell can count in two" in line


def _two_matrices(tmp_path: Path) -> list[reproduce.Cell]:
    """Two models' matrices with the same cell names: model a's SFT is long, model b's cells are short."""
    cells = []
    for tag in ("a", "b"):
        root = tmp_path / tag
        sft = _timed_cells(root, {"sft": ()}, 4.0 if tag == "a" else 0.2)
        for cell in sft + _timed_cells(root, {"eval-sft": ("sft",), "eval-base": ()}, 0.2):
            cell.root = root
            cells.append(cell)
    return cells


def test_workers_take_the_next_models_cells_while_the_first_waits_for_its_sft(tmp_path):
    """What `--jobs 2` over several models does: one queue, records per model, no idle worker while the
    first model's SFT runs."""
    harness = ("import sys; import tests.test_reproduce as t, reproduce; "
               f"from pathlib import Path; sys.exit(len(reproduce.run_cells(t._two_matrices(Path({str(tmp_path)!r})), "
               "poll_seconds=0.1)))")
    processes = [subprocess.Popen([sys.executable, "-c", harness], cwd=REPO) for _ in range(2)]
    assert [process.wait(timeout=120) for process in processes] == [0, 0]
    for tag in ("a", "b"):
        lines = [line.split() for line in (tmp_path / tag / "times.txt").read_text().splitlines()]
        assert sorted(name for name, *_ in lines) == ["eval-base", "eval-sft", "sft"]  # each once, in its matrix
        assert sorted(path.name for path in (tmp_path / tag / "cells").glob("*.json")) == [
            "eval-base.json", "eval-sft.json", "sft.json"]
        if tag == "a":
            sft_a = {name: (float(start), float(end)) for name, start, end, _ in lines}["sft"]
    started_b = [float(start) for _, start, _, _ in
                 (line.split() for line in (tmp_path / "b" / "times.txt").read_text().splitlines())]
    assert max(started_b) < sft_a[1]  # model b ran entirely while model a's SFT was running


def test_a_failure_in_one_matrix_skips_only_its_own_dependants(tmp_path):
    cells = _two_matrices(tmp_path)
    cells[0].command = [sys.executable, "-c", "raise SystemExit(1)"]  # model a's SFT fails
    assert reproduce.run_cells(cells, poll_seconds=0.1) == ["a/eval-sft", "a/sft"]
    assert (tmp_path / "b" / "cells" / "eval-sft.json").exists() and (tmp_path / "a" / "cells" / "eval-base.json").exists()


def test_a_cell_held_by_another_process_is_waited_for_then_not_rerun(tmp_path):
    cells = _timed_cells(tmp_path, {"a": (), "b": ("a",)}, seconds=0.2)
    lock = reproduce._claim(tmp_path / "locks", "a")  # another process is running a
    waiter = subprocess.Popen([sys.executable, "-c", (
        "import sys; import tests.test_reproduce as t, reproduce; "
        f"from pathlib import Path; root = Path({str(tmp_path)!r}); "
        "sys.exit(len(reproduce.run_cells(t._timed_cells(root, {'a': (), 'b': ('a',)}, 0.2), root, 0.1)))")], cwd=REPO)
    time.sleep(1.5)
    assert waiter.poll() is None and not (tmp_path / "times.txt").exists()  # neither a nor b started
    reproduce.run_cell(cells[0], tmp_path / "cells", tmp_path / "logs")  # the holder finishes a
    os.close(lock)
    assert waiter.wait(timeout=60) == 0
    assert [line.split()[0] for line in (tmp_path / "times.txt").read_text().splitlines()] == ["a", "b"]


def test_an_edited_cell_runs_again_and_so_do_the_cells_made_from_it(tmp_path):
    """A finished cell whose command changed since its record (a profile's flag edited) is stale: it runs
    again, then every cell that needs it; an unrelated cell, or the same command under another Python
    interpreter path (a moved checkout), is not rerun."""
    needs = {"a": (), "b": ("a",), "c": ()}
    assert reproduce.run_cells(_timed_cells(tmp_path, needs, 0.1), tmp_path, 0.1) == []
    moved = _timed_cells(tmp_path, needs, 0.1)
    for cell in moved:
        cell.command[0] = "/elsewhere/venv/bin/python"
    assert all(reproduce.current_record(cell, tmp_path) for cell in moved)
    edited = _timed_cells(tmp_path, needs, 0.1)
    edited[0].command[-1] = "0.2"  # a's flags changed
    assert not reproduce.current_record(edited[0], tmp_path) and reproduce.current_record(edited[1], tmp_path)
    assert reproduce.run_cells(edited, tmp_path, 0.1) == []
    ran = [line.split()[0] for line in (tmp_path / "times.txt").read_text().splitlines()]
    assert sorted(ran[:3]) == ["a", "b", "c"] and ran[3:] == ["a", "b"]
    assert all(reproduce.current_record(cell, tmp_path) for cell in edited)


def test_cells_made_from_other_data_run_again(synthetic_dir, tmp_path):
    """A data folder prepared again with other contents makes its finished cells stale (their records keep the
    digest of the files they ran on), so they run again; a folder without its files has no digest."""
    data = tmp_path / "data"
    shutil.copytree(synthetic_dir, data)
    before = reproduce.dataset_fingerprint(str(data))
    plan = reproduce.PROFILES["smoke"][0]
    assert {cell.data for cell in reproduce.plan_cells(plan, str(data), tmp_path / "m")} == {before}
    cells = _timed_cells(tmp_path, {"a": (), "b": ("a",)}, 0.1)
    for cell in cells:
        cell.data = before
    assert reproduce.run_cells(cells, tmp_path, 0.1) == []
    assert reproduce.dataset_fingerprint(str(data)) == before
    train = data / "train.json"
    train.write_text(json.dumps(json.loads(train.read_text())[:-1]))  # prepared again: one record fewer
    after = reproduce.dataset_fingerprint(str(data))
    assert after not in ("", before)
    for cell in cells:
        cell.data = after
    assert not any(reproduce.current_record(cell, tmp_path) for cell in cells)
    assert reproduce.run_cells(cells, tmp_path, 0.1) == []
    assert [line.split()[0] for line in (tmp_path / "times.txt").read_text().splitlines()] == ["a", "b", "a", "b"]
    assert reproduce.dataset_fingerprint(str(tmp_path / "absent")) == ""


def _checkpoint(folder: Path, damaged: bool = False) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text("{}")
    save_file({"w": torch.zeros(2)}, str(folder / "adapter_model.safetensors"))
    if damaged:
        weights = folder / "adapter_model.safetensors"
        weights.write_bytes(weights.read_bytes()[:10])


@pytest.mark.parametrize("kind, flag", [("sft", "--resume_from_checkpoint=True"), ("preference", "--resume_training=True"),
                                        ("eval", None)])
def test_a_killed_training_cell_continues_from_its_checkpoint_when_its_command_is_unchanged(tmp_path, kind, flag):
    script = "import sys; open(sys.argv[1], 'a').write(' '.join(sys.argv[2:]) + '\\n')"

    def cell(name: str, learning_rate: str) -> reproduce.Cell:
        return reproduce.Cell(name, kind, [sys.executable, "-c", script, str(tmp_path / f"{name}.argv"),
                                           f"--learning_rate={learning_rate}"], tmp_path / name)

    def killed(name: str, learning_rate: str, damaged: bool = False) -> None:
        """What a run killed after its first checkpoint leaves: the command stamp and checkpoint-2."""
        runtime.save_json(tmp_path / name / reproduce.CELL_COMMAND_FILE, {"command": cell(name, learning_rate).command})
        _checkpoint(tmp_path / name / "checkpoint-2", damaged)

    killed("same", "1")
    killed("changed", "1")  # the profile was edited since: its checkpoints are not this command's
    killed("damaged", "1", damaged=True)
    cells = [cell("same", "1"), cell("changed", "2"), cell("damaged", "1"), cell("fresh", "1")]
    assert reproduce.run_cells(cells, tmp_path) == []
    argv = {c.name: (tmp_path / f"{c.name}.argv").read_text().split() for c in cells}
    assert argv["same"] == ["--learning_rate=1"] + ([flag] if flag else [])
    assert argv["changed"] == ["--learning_rate=2"] and argv["damaged"] == argv["fresh"] == ["--learning_rate=1"]
    record = json.loads((tmp_path / "cells" / "same.json").read_text())
    assert record["command"][-1] == (flag or "--learning_rate=1")
    if flag:  # the stamp now names the new command, for the next kill
        stamp = json.loads((tmp_path / "changed" / reproduce.CELL_COMMAND_FILE).read_text())
        assert stamp["command"] == cells[1].command


def test_paired_differences_pair_seeds_and_take_the_standard_error_over_prompts():
    plan = reproduce.ModelPlan(model_name="tiny", tag="tiny", sft={}, preference={}, preference_seeds=(0, 1, 2),
                               main_negatives=15)
    hits = {"popularity": [1, 0, 0, 0], "sft-s0": [1, 0, 0, 0],
            "dpo-n1-b1-s0": [1, 1, 0, 0], "dpo-n1-b1-s1": [1, 0, 0, 0], "dpo-n1-b1-s2": [1, 1, 0, 0],
            "sdpo-n15-b1-s0": [1, 1, 1, 0], "sdpo-n15-b1-s1": [1, 1, 0, 0], "sdpo-n15-b1-s2": [0, 1, 0, 0]}
    found = {c["comparison"]: c for c in reproduce.paired_differences(plan, {"hits": hits})}
    assert set(found) == {"S-DPO (N=15) − DPO", "DPO − SFT", "S-DPO (N=15) − SFT", "S-DPO (N=15) − popularity"}
    versus_dpo = found["S-DPO (N=15) − DPO"]  # seed by seed: +1/4, +1/4, -1/4
    assert versus_dpo["per_seed"] == [0.25, 0.25, -0.25] and versus_dpo["ahead"] == 2 and versus_dpo["runs"] == 3
    assert versus_dpo["mean"] == pytest.approx(0.25 / 3)
    # Seed 0's per-prompt differences are (0, 0, 1, 0): std 0.5, over sqrt(4) prompts.
    assert versus_dpo["prompt_se"] == pytest.approx(0.25) and versus_dpo["n"] == 4
    versus_sft = found["DPO − SFT"]  # SFT's single run is paired with every DPO seed
    assert versus_sft["per_seed"] == [0.25, 0.0, 0.25] and versus_sft["ahead"] == 2
    assert "S-DPO (N=15) − DPO" in reproduce.format_differences(list(found.values()))


def test_table_runs_come_before_the_sweep_points(tmp_path):
    plan = next(plan for plan in reproduce.PROFILES["cpu"] if plan.tag == "tiny")
    runs = [cell.name for cell in reproduce.plan_cells(plan, "lastfm", tmp_path) if cell.kind == "preference"]
    first = plan.sft_seeds[0]  # preference seed by seed, each from every SFT model
    table = [reproduce.preference_name(n, 1.0, seed, sft) for seed in plan.preference_seeds for sft in plan.sft_seeds
             for n in (1, plan.main_negatives)]
    assert runs[:len(table)] == table and len(runs) > len(table)
    sweep = {reproduce.preference_name(n, 1.0, 0, first) for n in plan.negatives if n not in (1, plan.main_negatives)}
    sweep |= {reproduce.preference_name(plan.main_negatives, beta, 0, first) for beta in plan.betas if beta != 1.0}
    assert sweep and set(runs[len(table):]) == sweep  # each sweep point once, none repeating a Table 1 run


def test_sft_is_claimed_first_so_a_second_worker_runs_the_independent_cells_meanwhile(tmp_path):
    for plan in reproduce.PROFILES["cpu"]:
        cells = reproduce.plan_cells(plan, "lastfm", tmp_path)
        assert cells[0].kind == "sft" and not cells[0].needs
        independent = [cell.name for cell in cells if not cell.needs]
        assert {"eval-base", "baselines"} <= set(independent) and independent[0] == cells[0].name


def test_cpu_slices_split_this_process_cpus_and_refuse_more_jobs_than_cpus(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {7, 3, 4, 5, 6})
    assert reproduce.cpu_slices(2) == [[3, 4, 5], [6, 7]]
    assert reproduce.cpu_slices(5) == [[3], [4], [5], [6], [7]]
    with pytest.raises(runtime.UsageError, match="--jobs 6: this process may use 5 CPU"):
        reproduce.cpu_slices(6)


def _flag_names(command: list[str]) -> set[str]:
    return {arg[2:].split("=")[0] for arg in command if arg.startswith("--")}


@pytest.mark.parametrize("profile", ["paper", "cpu"])
def test_every_command_of_a_profile_names_only_flags_its_stage_has(profile, tmp_path):
    for plan in reproduce.PROFILES[profile]:
        cells = reproduce.plan_cells(plan, "lastfm", tmp_path)
        for cell in cells:
            script = next(arg for arg in cell.command if arg.endswith(".py") or arg == "baselines")
            parameters = set(inspect.signature(STAGE_FUNCTIONS[script]).parameters)
            assert _flag_names(cell.command[cell.command.index(script):]) <= parameters, (cell.name, script)
            for need in cell.needs:  # dependencies come earlier in the run order
                assert need in [c.name for c in cells[:cells.index(cell)]]


@pytest.mark.parametrize("nproc", [1, 2, 4, 8])
def test_paper_profile_keeps_the_effective_batch_of_128_for_any_number_of_gpus(tmp_path, capsys, monkeypatch, nproc):
    monkeypatch.setenv("NPROC", str(nproc))
    reproduce.reproduce(profile="paper", dataset="lastfm", output_root=str(tmp_path), dry_run=True)
    lines = capsys.readouterr().out.strip().splitlines()
    launcher = f"-m torch.distributed.run --standalone --nproc_per_node {nproc} " if nproc > 1 else ""
    sft_line = next(line for line in lines if " sft.py " in line)
    assert f"python {launcher}sft.py" in sft_line.replace(sys.executable, "python")
    for flag in ("--batch_size=4", "--learning_rate=1e-05", "--num_train_epochs=5",
                 "--model_name meta-llama/Llama-2-7b-hf"):
        assert flag in sft_line
    training = [line for line in lines if " sft.py " in line or " dpo.py " in line or " softmax_dpo.py " in line]
    for line in training:
        batch = int(line.split("--batch_size=")[1].split()[0])
        accumulation = int(line.split("--gradient_accumulation_steps=")[1].split()[0])
        assert batch * accumulation * nproc == 128
    evaluations = [line for line in lines if " inference.py " in line]
    assert all(f"python {launcher}inference.py" in line.replace(sys.executable, "python") for line in evaluations)
    sdpo = [line for line in lines if " softmax_dpo.py " in line]
    assert {line.split("--neg_num=")[1].split()[0] for line in sdpo} == {"3", "7", "15"}
    assert all("--num_train_epochs=3" in line and "--resume_from_checkpoint" in line for line in sdpo)
    assert any(" dpo.py " in line for line in lines) and len(evaluations) == 1 + len(training)
    assert not list(tmp_path.iterdir())  # a dry run writes nothing


def test_a_process_count_that_does_not_divide_the_effective_batch_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("NPROC", "3")
    with pytest.raises(runtime.UsageError, match="effective batch of 128 cannot be split into 3 processes"):
        reproduce.reproduce(profile="paper", dataset="lastfm", output_root=str(tmp_path), dry_run=True)
    monkeypatch.setenv("NPROC", "two")
    with pytest.raises(runtime.UsageError, match="NPROC='two'"):
        reproduce.reproduce(profile="paper", dataset="lastfm", output_root=str(tmp_path), dry_run=True)


def test_without_nproc_the_paper_profile_starts_one_process_per_visible_gpu(tmp_path, monkeypatch):
    monkeypatch.delenv("NPROC", raising=False)
    monkeypatch.setattr(reproduce.hardware, "default_process_count", lambda: 2)
    cells = reproduce.plan_cells(reproduce.PROFILES["paper"][0], "lastfm", tmp_path)
    assert all("--nproc_per_node" in cell.command and cell.command[cell.command.index("--nproc_per_node") + 1] == "2"
               for cell in cells if cell.kind != "baselines")
    cpu_cells = reproduce.plan_cells(reproduce.PROFILES["cpu"][0], "lastfm", tmp_path)
    assert not any("torch.distributed.run" in cell.command for cell in cpu_cells)  # the cpu profile: one process


def test_unknown_profile_or_model_is_one_line(tmp_path):
    with pytest.raises(runtime.UsageError, match="unknown profile 'gpu'"):
        reproduce.reproduce(profile="gpu", output_root=str(tmp_path))
    with pytest.raises(runtime.UsageError, match="profile cpu has no model llama"):
        reproduce.reproduce(profile="cpu", models="llama", output_root=str(tmp_path))


def test_tiny_bpe_sasrec_adds_sft_models_without_changing_the_first_ones_cells(tmp_path):
    """Three SFT models, a DPO and an S-DPO run from each (Table 1, paired per SFT model), the negatives sweep
    from the first; the first SFT model and its evaluation keep the commands of the one-SFT plan they were
    committed under, so their finished cells stay current."""
    plan = next(plan for plan in reproduce.PROFILES["cpu"] if plan.tag == "tiny-bpe-sasrec")
    one = dataclasses.replace(plan, sft_seeds=(0,), preference_seeds=(0, 1, 2))  # the plan results/ was made by
    cells = {cell.name: cell for cell in reproduce.plan_cells(plan, "lastfm", tmp_path)}
    before = {cell.name: cell for cell in reproduce.plan_cells(one, "lastfm", tmp_path)}
    for name in ("sft-s0", "eval-sft-s0", "eval-base", "baselines"):
        assert cells[name].command == before[name].command
    assert reproduce.table_runs(plan, 1) == [f"dpo-n1-b1-s0-sft{seed}" for seed in (0, 1, 2)]
    assert reproduce.table_runs(plan, 15) == [f"sdpo-n15-b1-s0-sft{seed}" for seed in (0, 1, 2)]
    sweep = {name for name, cell in cells.items() if cell.kind == "preference" and cell.info["sft_seed"] == 0}
    assert sweep == {reproduce.preference_name(n, 1.0, seed, 0) for n in (1, 3, 15) for seed in (0, 1, 2)}
    assert len(cells) == 34


def test_cpu_tiny_plan_runs_every_table_run_from_each_of_three_sft_models(tmp_path):
    plan = next(plan for plan in reproduce.PROFILES["cpu"] if plan.tag == "tiny")
    assert plan.sft_seeds == (0, 1, 2) and len(plan.preference_seeds) >= 3
    assert plan.sft["item_embeddings"] == "sasrec" and plan.sft["tie_word_embeddings"] is True
    cells = {cell.name: cell for cell in reproduce.plan_cells(plan, "lastfm", tmp_path)}
    for sft_seed in plan.sft_seeds:
        assert f"--seed={sft_seed}" in cells[f"sft-s{sft_seed}"].command
        for seed in plan.preference_seeds:
            for negatives in (1, plan.main_negatives):
                cell = cells[reproduce.preference_name(negatives, 1.0, seed, sft_seed)]
                assert cell.needs == (f"sft-s{sft_seed}",) and cell.info["sft_seed"] == sft_seed
                start = cell.command[cell.command.index("--resume_from_checkpoint") + 1]
                assert Path(start).parent.name == f"sft-s{sft_seed}"
    sweeps = [cell for cell in cells.values() if cell.kind == "preference" and cell.info["beta"] != 1.0]
    assert sweeps and all(cell.info["sft_seed"] == plan.sft_seeds[0] for cell in sweeps)


def test_with_several_sft_models_a_preference_run_is_paired_with_its_own_sft_and_the_se_counts_both_levels():
    plan = reproduce.ModelPlan(model_name="tiny", tag="tiny", sft={}, preference={}, sft_seeds=(0, 1),
                               preference_seeds=(0, 1), main_negatives=3)
    name = reproduce.preference_name
    hits = {"popularity": [0, 0, 0, 0], "sft-s0": [1, 0, 0, 0], "sft-s1": [1, 1, 1, 0],
            name(1, 1.0, 0, 0): [1, 1, 0, 0], name(1, 1.0, 1, 0): [1, 0, 0, 0],
            name(1, 1.0, 0, 1): [1, 1, 1, 1], name(1, 1.0, 1, 1): [1, 1, 1, 0],
            name(3, 1.0, 0, 0): [1, 1, 1, 0], name(3, 1.0, 1, 0): [1, 1, 0, 0],
            name(3, 1.0, 0, 1): [1, 1, 1, 1], name(3, 1.0, 1, 1): [0, 1, 1, 0]}
    found = {c["comparison"]: c for c in reproduce.paired_differences(plan, {"hits": hits})}
    versus_sft = found["DPO − SFT"]  # each DPO run minus the SFT model it started from
    assert versus_sft["per_seed"] == [0.25, 0.0, 0.25, 0.0]
    assert versus_sft["per_sft"] == [0.125, 0.125] and versus_sft["sft_se"] == 0.0 and versus_sft["sft_ahead"] == 2
    versus_dpo = found["S-DPO (N=3) − DPO"]  # within SFT 0: +0.25, +0.25; within SFT 1: 0, -0.25
    assert versus_dpo["per_seed"] == [0.25, 0.25, 0.0, -0.25] and versus_dpo["per_sft"] == [0.25, -0.125]
    assert versus_dpo["sft_se"] == pytest.approx(0.1875) and versus_dpo["sft_ahead"] == 1
    assert "± SE over SFT models" in reproduce.format_differences(list(found.values()))


def test_with_uneven_runs_per_sft_model_the_se_over_sft_models_stands_beside_their_mean():
    """SFT model 0 has two preference runs, model 1 one (MovieLens' committed run): the mean beside "± SE over
    SFT models" is the mean of the per-model differences, the quantity that SE belongs to, not of all runs."""
    plan = reproduce.ModelPlan(model_name="tiny", tag="tiny", sft={}, preference={}, sft_seeds=(0, 1),
                               preference_seeds=(0, 1), main_negatives=3)
    name = reproduce.preference_name
    hits = {"sft-s0": [0, 0, 0, 0], "sft-s1": [0, 0, 0, 0],
            name(1, 1.0, 0, 0): [0, 0, 0, 0], name(1, 1.0, 1, 0): [0, 0, 0, 0], name(1, 1.0, 0, 1): [0, 0, 0, 0],
            name(3, 1.0, 0, 0): [1, 0, 0, 0], name(3, 1.0, 1, 0): [1, 0, 0, 0], name(3, 1.0, 0, 1): [1, 1, 1, 1]}
    found = {c["comparison"]: c for c in reproduce.paired_differences(plan, {"hits": hits})}
    versus_dpo = found["S-DPO (N=3) − DPO"]
    assert versus_dpo["per_seed"] == [0.25, 0.25, 1.0] and versus_dpo["mean"] == pytest.approx(0.5)
    assert versus_dpo["per_sft"] == [0.25, 1.0] and versus_dpo["sft_mean"] == pytest.approx(0.625)
    row = next(line for line in reproduce.format_differences([versus_dpo]).splitlines() if "S-DPO" in line)
    assert "| +0.5000 ± 0.4330 |" in row and "| +0.6250 ± 0.3750 |" in row
    del versus_dpo["sft_mean"]  # results.json written before sft_mean was stored: computed from per_sft
    assert "| +0.6250 ± 0.3750 |" in reproduce.format_differences([versus_dpo])


def test_cells_runs_only_the_named_cells_and_prints_only_them(tmp_path, capsys):
    """`--cells 'sft-s*,eval-sft-s*'`: rerunning the SFT models and their evaluations elsewhere (issue 21)."""
    reproduce.reproduce(profile="cpu", dataset="lastfm", models="tiny", output_root=str(tmp_path), dry_run=True,
                        cells="sft-s*,eval-sft-s*")
    lines = capsys.readouterr().out.strip().splitlines()
    outputs = [line.split("--output_dir ")[1].split()[0] for line in lines]
    assert [Path(out).name for out in outputs] == ["sft-s0", "sft-s1", "sft-s2", "sft-s0", "sft-s1", "sft-s2"]
    assert [" sft.py " in line for line in lines] == [True] * 3 + [False] * 3
    assert not list(tmp_path.iterdir())


def test_a_cells_pattern_matching_nothing_or_missing_an_input_is_one_line(tmp_path):
    with pytest.raises(runtime.UsageError, match="--cells sft-s9: no cell of the plan matches"):
        reproduce.reproduce(profile="cpu", models="tiny", output_root=str(tmp_path), dry_run=True, cells="sft-s9")
    with pytest.raises(runtime.UsageError, match="eval-sft-s0 needs sft-s0, which is neither selected nor finished"):
        reproduce.reproduce(profile="cpu", models="tiny", output_root=str(tmp_path), dry_run=True, cells="eval-sft-s0")


def test_a_selected_cell_whose_input_finished_earlier_runs_alone(tmp_path):
    cells = _timed_cells(tmp_path, {"a": (), "b": ("a",), "c": ("b",)}, seconds=0.05)
    for cell in cells:
        cell.root = tmp_path
    with pytest.raises(runtime.UsageError, match="b needs a"):
        reproduce.select_cells(cells, "b")
    assert reproduce.run_cells(reproduce.select_cells(cells, ["a"]), poll_seconds=0.1) == []
    chosen = reproduce.select_cells(cells, "b, c")
    assert [cell.name for cell in chosen] == ["b", "c"]
    assert reproduce.run_cells(chosen, poll_seconds=0.1) == []
    assert [line.split()[0] for line in (tmp_path / "times.txt").read_text().splitlines()] == ["a", "b", "c"]


def test_a_partly_finished_matrix_pairs_dpo_and_sdpo_runs_of_the_same_sft_model_and_seed_only():
    plan = reproduce.ModelPlan(model_name="tiny", tag="tiny", sft={}, preference={}, sft_seeds=(0, 1),
                               preference_seeds=(0, 1), main_negatives=3)
    name = reproduce.preference_name
    hits = {"sft-s0": [0, 0, 0, 0], "sft-s1": [0, 0, 0, 0],  # DPO (seed 0, SFT 0) and S-DPO (seed 1, SFT 1) unfinished
            name(1, 1.0, 1, 0): [1, 0, 0, 0], name(1, 1.0, 0, 1): [1, 1, 0, 0], name(1, 1.0, 1, 1): [0, 0, 0, 0],
            name(3, 1.0, 0, 0): [1, 1, 1, 1], name(3, 1.0, 1, 0): [1, 1, 0, 0], name(3, 1.0, 0, 1): [1, 1, 1, 0]}
    found = {c["comparison"]: c for c in reproduce.paired_differences(plan, {"hits": hits})}
    versus_dpo = found["S-DPO (N=3) − DPO"]
    assert versus_dpo["pairs"] == [[name(3, 1.0, 1, 0), name(1, 1.0, 1, 0)], [name(3, 1.0, 0, 1), name(1, 1.0, 0, 1)]]
    assert versus_dpo["per_seed"] == [0.25, 0.25]


def test_the_wall_time_line_names_unrecorded_calls_only_when_more_cells_finished_than_the_calls_ran(
        smoke_run, synthetic_dir):
    root, _, _, _ = smoke_run
    payload = json.loads((root / "results" / synthetic_dir.name / "tiny" / "results.json").read_text())
    names = [f"cell-{i}" for i in range(10)]
    payload["reproduce_calls"] = [dict(payload["reproduce_calls"][0], cells_run=4)]
    payload["report_only"] = False  # other tests of the module may have rewritten the report
    payload["cells_missing"] = names[:6]  # 4 of 10 finished, all in the recorded call (a `--cells` run)
    assert "(cells run: 4 of 10)." in reproduce.format_report(payload)
    payload["cells_missing"] = names[:5]  # 5 finished, 4 of them in the recorded call
    assert "(cells run: 4 of 10); some cells ran in calls not recorded." in reproduce.format_report(payload)


def test_table_md_says_how_the_negatives_were_drawn():
    payload = json.loads((REPO / "results" / "lastfm-per-sample" / "tiny" / "results.json").read_text())
    payload.pop("candidates", None)
    assert "Candidates:" not in reproduce.format_report(payload)  # a results.json from before it was recorded
    for protocol in ("per_sample", "original", "unknown"):
        lines = reproduce.format_report({**payload, "candidates": protocol}).splitlines()
        [line] = [line for line in lines if line.startswith("Candidates:")]
        assert line == f"Candidates: {reproduce.CANDIDATE_NOTES[protocol]}."
    assert "seeded by the target" in reproduce.CANDIDATE_NOTES["original"]


def test_the_title_names_the_plan_when_it_is_not_the_models_name():
    payload = json.loads((REPO / "results" / "lastfm" / "tiny-bpe" / "results.json").read_text())
    assert reproduce.format_report(payload).startswith("# tiny-bpe on lastfm (profile `cpu`)")
    payload["plan"]["tag"] = "tiny-bpe-sasrec"  # the same model, another plan (here: its SFT's start)
    assert reproduce.format_report(payload).startswith("# tiny-bpe (plan tiny-bpe-sasrec) on lastfm (profile `cpu`)")
