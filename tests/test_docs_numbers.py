"""The committed results and the text that quotes them agree (seconds; no training).

- Every `results/<dataset>/<model>/table.md` and `table.csv` is what reproduce.py writes from the results.json
  beside it (`reproduce.format_report`, `reproduce.write_csv`), and its figures are the ones results.json lists.
- Where the per-prompt ranks were kept, every paired difference (mean, spread, prompt SE) recomputes from them.
- Every 4-decimal number in docs/measurements.md's sections on the committed runs is in that run's results.json
  (metrics, table, paired differences) or table.md, or is listed in ELSEWHERE with where it comes from.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

import reproduce

REPO = Path(__file__).resolve().parents[1]
# results/<dataset>/<model>/ and the reruns of a profile's cells beside it (results/<dataset>/<model>/rerun/).
FOLDERS = sorted(path.parent for pattern in ("*/*/results.json", "*/*/rerun/results.json")
                 for path in (REPO / "results").glob(pattern))
MEASUREMENTS = REPO / "docs" / "measurements.md"
NUMBER = re.compile(r"(?<![\d.])\d\.\d{4}(?![\d])")

# Parts of docs/measurements.md about a committed run: (first line's start, where the part ends, its folder).
PARTS = (
    ("## tiny-bpe-sasrec with three SFT models", "\n## ", "lastfm/tiny-bpe-sasrec"),
    # Its plan with one SFT model (22 cells at f6b4eb9), committed until the run above replaced it; read from git.
    ("## tiny-bpe-sasrec's whole plan", "\n## ", "lastfm/tiny-bpe-sasrec@e3b6b38"),
    ("## tiny-bpe's whole plan", "\n## ", "lastfm/tiny-bpe"),
    # tiny-bpe's first cells (the BPE of 85d4d88), committed in results/lastfm/tiny-bpe/ until dc279d1; read from git.
    ("## tiny-bpe after the tiny recipe's SFT", "\n## ", "lastfm/tiny-bpe@dc279d1"),
    ("## MovieLens 100K on per-sample candidates", "\n## ", "movielens/tiny"),
    ("## The cpu profile's finished tiny run on LastFM", "\n## ", "lastfm-original/tiny"),
    ("## The rerun of the SFT cells", "\n## ", "lastfm-original/tiny/rerun"),
    ("## LastFM per-sample, Table 1 with 3 SFT × 3", "\n## ", "lastfm-per-sample/tiny"),
    # Its first 20 cells (one preference seed per SFT model), committed until 0c6ff7f; read from git.
    ("## LastFM per-sample, Table 1 with 3 SFT seeds, one", "\n## ", "lastfm-per-sample/tiny@9163090"),
    # Its first run (SFT seed 0 and one preference pair, commit fcedafb), committed until 6bf2cd5; read from git.
    ("## LastFM with per-sample candidates", "\n## ", "lastfm-per-sample/tiny@6bf2cd5"),
    # The former tiny recipe's run (4 SFT epochs, one SFT model), committed until ac6c43a; read from git.
    ("## The committed cpu-profile results", "**LastFM, SmolLM2-135M-Instruct**", "lastfm/tiny@ac6c43a"),
    # SmolLM2's run of commit 1bcd49a, committed until 3799f25 (the run of 18b2f3c replaced it, same numbers).
    ("**LastFM, SmolLM2-135M-Instruct**", "\n## ", "lastfm/smollm2-135m@3799f25"),
    ("## SmolLM2's profile run again", "\n## ", "lastfm-original/smollm2-135m"),
    ("## SmolLM2's profile run with 3 preference seeds", "\n## ", "lastfm/smollm2-135m@3799f25"),
    ("## The profile run with the longer preference stage", "\n## ", "lastfm/tiny@ac6c43a"),
)

# Numbers these parts quote from elsewhere, each with its source.
ELSEWHERE = {
    # The one-token tiny model's S-DPO − DPO on the same data (results/lastfm-per-sample/tiny), compared with:
    "lastfm/tiny-bpe-sasrec@e3b6b38": {"0.0124", "0.0015"},
    # The same, and SFT model 0's DPO and S-DPO rank HR@1 in the one-SFT run (lastfm/tiny-bpe-sasrec@e3b6b38):
    "lastfm/tiny-bpe-sasrec": {"0.0124", "0.0015", "0.2320", "0.2473"},
    "lastfm/tiny-bpe": set(),
    "lastfm/tiny-bpe@dc279d1": set(),
    "movielens/tiny": set(),
    # The previous committed tiny run (150 preference steps, S-DPO N = 3, run at commit 1e61bcb):
    # `git show f6ae66f:results/lastfm/tiny/table.md`, its DPO and S-DPO rows and their difference.
    "lastfm/tiny@ac6c43a": {"0.1995", "0.0009", "0.1999", "0.0012", "0.0004",
                    # Differences between two sweep points of results.json (rank_hr@1 at seed 0):
                    "0.0033",  # N = 3 (0.2023) − N = 1 (0.1990)
                    "0.0045",  # β = 0.5 (0.2032) − β = 2 (0.1987)
                    "0.0067"},  # S-DPO N = 15, β = 1: seed 4 (0.2070) − seed 1 (0.2003), the range of its 5 seeds
    "lastfm-original/smollm2-135m": set(),
    "lastfm/smollm2-135m@3799f25": set(),
    "lastfm-original/tiny": set(),
    # Runs on the original candidates it is compared with (results/lastfm-original/tiny and its rerun/):
    "lastfm-per-sample/tiny@6bf2cd5": {"0.4185", "0.3975", "0.4666", "0.0257", "0.0168"},
    "lastfm-per-sample/tiny": set(),
    # Seed 0's earlier run (lastfm-per-sample/tiny@6bf2cd5) and the original candidates' S-DPO − DPO over 9 runs:
    "lastfm-per-sample/tiny@9163090": {"0.4090", "0.0217"},
    # The committed run's numbers the rerun is compared with (results/lastfm-original/tiny/results.json: per-run metrics,
    # the SFT row, the per-SFT-model S-DPO − DPO), and differences between them:
    "lastfm-original/tiny/rerun": {"0.4185", "0.4052", "0.4038", "0.4092", "0.0081", "0.4035", "0.4292", "0.0253", "0.0226",
                          "0.0172",
                          "0.0257",  # S-DPO (0.4292) − DPO (0.4035), committed run, SFT seed 0, preference seed 0
                          "0.0107",  # S-DPO (0.4292) − SFT (0.4185), same
                          "0.0150",  # DPO (0.4035) − SFT (0.4185), same
                          "0.0210",  # SFT seed 0: committed (0.4185) − rerun (0.3975)
                          "0.0046",  # SFT seed 1: rerun (0.4098) − committed (0.4052)
                          "0.0048",  # SFT seed 2: committed (0.4038) − rerun (0.3989), unrounded values
                          # The recipe study's 3,000-prompt ranks of the same models (docs/recipe_study.md):
                          "0.4273", "0.4073", "0.4013"},
}


PREVIOUS_TINY = ("f6ae66f", "results/lastfm/tiny/table.md", {"0.1995", "0.0009", "0.1999", "0.0012"})


def _payload(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text(encoding="utf-8"))


def _name(folder: Path) -> str:
    return folder.relative_to(REPO / "results").as_posix()


def test_there_are_committed_results():
    assert {"lastfm-original/tiny", "lastfm-original/smollm2-135m"} <= {_name(folder) for folder in FOLDERS}


@pytest.mark.parametrize("folder", FOLDERS, ids=_name)
def test_table_md_and_csv_are_what_reproduce_writes_from_results_json(folder, tmp_path):
    payload = _payload(folder)
    assert (folder / "table.md").read_text(encoding="utf-8") == reproduce.format_report(payload)
    reproduce.write_csv(payload["table"], tmp_path / "table.csv")
    assert (folder / "table.csv").read_text(encoding="utf-8") == (tmp_path / "table.csv").read_text(encoding="utf-8")
    assert sorted(payload["figures"]) == sorted(path.name for path in folder.glob("*.png"))


@pytest.mark.parametrize("folder", FOLDERS, ids=_name)
def test_paired_differences_recompute_from_the_committed_per_prompt_ranks(folder):
    payload = _payload(folder)
    if not (folder / reproduce.PER_PROMPT_FILE).exists():  # a report from before they were kept
        assert "per_prompt_file" not in payload
        assert "per-prompt ranks: not recorded" in (folder / "table.md").read_text(encoding="utf-8")
        return
    for metric, key in reproduce.DIFFERENCES_KEY.items():  # generation's where the evaluations generated
        recomputed = reproduce.recompute_paired_differences(folder, metric)
        assert len(recomputed) == len(payload.get(key, []))
        for again, stored in zip(recomputed, payload.get(key, [])):
            for number in ("mean", "std", "per_seed", "ahead", "n", "prompt_se"):
                assert again[number] == pytest.approx(stored[number]), (metric, stored["comparison"], number)


@pytest.mark.parametrize("folder", FOLDERS, ids=_name)
def test_no_committed_run_is_recorded_as_made_from_uncommitted_changes(folder):
    """Runs from before `git_dirty` was recorded have none; table.md then says "not recorded"."""
    payload = _payload(folder)
    sources = {**payload["runs"], **payload["references"]}
    assert [name for name, source in sources.items() if source.get("git_dirty")] == []
    assert payload.get("report_git_dirty") is not True
    if any("git_dirty" not in run for run in payload["runs"].values()):
        assert "uncommitted changes: not recorded" in (folder / "table.md").read_text(encoding="utf-8")


def _recorded_numbers(folder: Path) -> set[str]:
    """Every number of the report at 4 decimals: metrics, table rows, paired differences (not the training
    logs and flags, whose thousands of values would match almost anything) and table.md's text."""
    payload = _payload(folder)
    found: set[str] = set()

    def walk(value) -> None:
        if isinstance(value, bool):
            return
        if isinstance(value, float):
            found.add(f"{abs(value):.4f}")
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk([run.get("metrics", {}) for run in payload["runs"].values()])
    walk([payload["references"], payload["table"], payload["paired_differences"],
          payload.get(reproduce.DIFFERENCES_KEY["generation"], [])])
    found |= set(NUMBER.findall((folder / "table.md").read_text(encoding="utf-8")))
    return found


def _results_folder(spec: str, tmp_path: Path) -> Path:
    """`lastfm-original/tiny`: the committed folder; `lastfm/tiny@REV`: results/lastfm/tiny/'s results.json and
    table.md at commit REV (results/lastfm/ was renamed lastfm-original/ when per-sample candidates became the
    default)."""
    folder, _, revision = spec.partition("@")
    if not revision:
        return REPO / "results" / folder
    for name in ("results.json", "table.md"):
        text = subprocess.run(["git", "show", f"{revision}:results/{folder}/{name}"], cwd=REPO, check=True,
                              capture_output=True, text=True).stdout
        (tmp_path / name).write_text(text, encoding="utf-8")
    return tmp_path


def _part(text: str, start: str, end: str) -> str:
    begin = text.index(start)
    stop = text.find(end, begin + len(start))
    return text[begin:stop if stop != -1 else len(text)]


@pytest.mark.parametrize("start, end, folder", PARTS, ids=[part[0].strip("#* ")[:40] for part in PARTS])
def test_every_4_decimal_number_in_the_measurements_of_a_committed_run_is_in_its_files(start, end, folder, tmp_path):
    text = _part(MEASUREMENTS.read_text(encoding="utf-8"), start, end)
    quoted = set(NUMBER.findall(text))
    assert quoted, "the part quotes no number: has its heading changed?"
    missing = sorted(quoted - _recorded_numbers(_results_folder(folder, tmp_path)) - ELSEWHERE[folder])
    assert missing == [], f"docs/measurements.md ({start!r}) quotes numbers not in results/{folder}: {missing}"


def test_every_number_listed_as_from_elsewhere_is_still_quoted():
    text = MEASUREMENTS.read_text(encoding="utf-8")
    for folder, numbers in ELSEWHERE.items():
        quoted = set().union(*(NUMBER.findall(_part(text, start, end)) for start, end, f in PARTS if f == folder))
        assert numbers <= quoted, f"no longer quoted, drop from ELSEWHERE: {sorted(numbers - quoted)}"


def test_the_previous_tiny_runs_numbers_are_in_its_committed_table():
    commit, path, numbers = PREVIOUS_TINY
    shown = subprocess.run(["git", "show", f"{commit}:{path}"], cwd=REPO, capture_output=True, text=True)
    if shown.returncode != 0:
        pytest.skip(f"{commit} is not in this clone's history (shallow clone?)")
    assert numbers <= set(NUMBER.findall(shown.stdout))


def test_every_4_decimal_number_in_the_readmes_results_section_is_in_the_committed_files():
    """The README's first-page results (table, paired differences, the rerun, the sweeps) quote committed files only."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    text = _part(readme, "## Results at CPU scale", "\n## ")
    quoted = set(NUMBER.findall(text))
    assert len(quoted) > 20, "the results section quotes few numbers: has its heading changed?"
    recorded = set().union(*(_recorded_numbers(REPO / "results" / name)
                             for name in ("lastfm-original/tiny", "lastfm-original/tiny/rerun", "lastfm-original/smollm2-135m",
                                          "lastfm-per-sample/tiny", "movielens/tiny", "lastfm/tiny-bpe",
                                          "lastfm/tiny-bpe-sasrec")))
    assert sorted(quoted - recorded) == []
