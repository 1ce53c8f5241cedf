"""Everything about data: loading splits, prompts, SFT and preference rows, tokenization, metrics.

Splits are in the original S-DPO JSON format: a list of records
``{"historyList": "a::b::c" or ["a", "b", "c"], "itemList": [20 names], "trueSelection": name}``.

Every choice that involves chance (which template a record gets, which negatives it gets) is a pure
function of the record and a seed, so the same record gets the same prompt in SFT, DPO, S-DPO and
inference, and a rerun reproduces the same rows.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

REPO_ROOT = Path(__file__).resolve().parent
DATA_ROOT = REPO_ROOT / "data"
PROMPT_ROOT = REPO_ROOT / "prompts"
HISTORY_SEPARATOR = "::"
HISTORY_PLACEHOLDER = "[HistoryHere]"
CANDIDATES_PLACEHOLDER = "[CansHere]"
_PLACEHOLDER_PATTERN = re.compile(f"{re.escape(HISTORY_PLACEHOLDER)}|{re.escape(CANDIDATES_PLACEHOLDER)}")
TEMPLATE_SEPARATOR = "---"
REAL_DATASETS = ("lastfm", "movielens", "goodreads", "lastfm-sdpo")  # lastfm-sdpo: the original release's split
DRAWN_CANDIDATES_DATASETS = ("lastfm", "movielens", "goodreads")  # data.prepare draws their candidates: NAME, NAME-original
SYNTHETIC_DATASET = "synthetic"
DOMAIN_OF_DATASET = {"lastfm": "music", "movielens": "movies", "goodreads": "books", "lastfm-sdpo": "music",
                     "synthetic": "music"}


class DataError(ValueError):
    """Bad input data; the message is one line naming the file, the record and the field."""


@dataclass(frozen=True)
class Record:
    """One recommendation sample: a history (oldest first), 20 candidates and the true next item."""

    history: tuple[str, ...]
    candidates: tuple[str, ...]
    target: str

    @property
    def key(self) -> str:
        """A stable identity of the record, used to seed its template choice and its negatives."""
        return HISTORY_SEPARATOR.join(self.history) + "=>" + self.target + "|" + "|".join(self.candidates)


# ----------------------------------------------------------------------------------------------
# Loading and validation


def _parse_record(raw: object, path: Path, index: int) -> Record:
    where = f"{path}: record {index}"
    if not isinstance(raw, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    for field in ("historyList", "itemList", "trueSelection"):
        if field not in raw:
            raise DataError(f"{where}: missing field '{field}'")
    history = raw["historyList"]
    if isinstance(history, str):
        history = [name for name in history.split(HISTORY_SEPARATOR)] if history.strip() else []
    if not isinstance(history, list) or not all(isinstance(name, str) for name in history):
        raise DataError(f"{where}: field 'historyList' must be a '::'-joined string or a list of strings")
    history = [name.strip() for name in history]
    if not history or any(not name for name in history):
        raise DataError(f"{where}: field 'historyList' is empty or holds an empty name")
    candidates = raw["itemList"]
    if not isinstance(candidates, list) or not all(isinstance(name, str) for name in candidates):
        raise DataError(f"{where}: field 'itemList' must be a list of strings")
    candidates = [name.strip() for name in candidates]
    if "" in candidates:
        raise DataError(f"{where}: field 'itemList' holds an empty name (candidate {candidates.index('')})")
    if len(candidates) < 2:
        raise DataError(f"{where}: field 'itemList' needs at least 2 candidates, got {len(candidates)}")
    if len(set(candidates)) != len(candidates):
        duplicate = next(name for name in candidates if candidates.count(name) > 1)
        raise DataError(f"{where}: field 'itemList' holds duplicate candidate {duplicate!r}")
    target = raw["trueSelection"]
    if not isinstance(target, str) or not target.strip():
        raise DataError(f"{where}: field 'trueSelection' must be a non-empty string")
    target = target.strip()
    if target not in candidates:
        raise DataError(f"{where}: field 'trueSelection' {target!r} is not among the candidates in 'itemList'")
    return Record(tuple(history), tuple(candidates), target)


def load_records(path: str | Path) -> list[Record]:
    """Read and validate one split file in the original S-DPO JSON format."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: data file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot read data file ({error})") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: not valid JSON (line {error.lineno}: {error.msg})") from None
    if not isinstance(raw, list):
        raise DataError(f"{path}: expected a JSON list of records, got {type(raw).__name__}")
    if not raw:
        raise DataError(f"{path}: the file holds no records")
    return [_parse_record(item, path, index) for index, item in enumerate(raw)]


class Templates(list):
    """Prompt templates (a list of strings) and how their items are joined: `quote_items` True for this
    project's files ('"a", "b"'), False for the original release's (plain 'a, b')."""

    def __init__(self, templates: Iterable[str], quote_items: bool = True):
        super().__init__(templates)
        self.quote_items = quote_items


def _is_original_prompt_file(lines: Sequence[str]) -> bool:
    """The original release's format: one template per line, no '---' separators.

    Recognised when no line is '---' and there are at least two non-empty lines, each holding both
    placeholders (a file with one single-line template reads the same either way except for quoting,
    and is taken as this project's format).
    """
    filled = [line for line in lines if line.strip()]
    return (
        len(filled) >= 2
        and not any(line.strip() == TEMPLATE_SEPARATOR for line in lines)
        and all(HISTORY_PLACEHOLDER in line and CANDIDATES_PLACEHOLDER in line for line in filled)
    )


def load_templates(path: str | Path) -> Templates:
    """Read prompt templates in either format, detected from the file:

    - this project's: blocks separated by '---' lines; '#' lines are comments; items are quoted.
    - the original release's (`prompt/music.txt` etc.): one template per non-empty line, no comments;
      items are joined with ', ' unquoted, as the original does.

    Each template must contain both placeholders; surrounding whitespace is stripped, so the prompt ends
    with the template's answer cue (e.g. 'Answer:') and the completion starts with a space.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: prompt file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot read prompt file ({error})") from None
    lines = text.splitlines()
    if _is_original_prompt_file(lines):
        return Templates([line.strip() for line in lines if line.strip()], quote_items=False)
    blocks: list[list[str]] = [[]]
    for line in lines:
        if line.strip() == TEMPLATE_SEPARATOR:
            blocks.append([])
        elif not line.lstrip().startswith("#"):
            blocks[-1].append(line)
    templates = ["\n".join(block).strip() for block in blocks]
    templates = [template for template in templates if template]
    if not templates:
        raise DataError(f"{path}: the prompt file holds no template")
    for index, template in enumerate(templates):
        for placeholder in (HISTORY_PLACEHOLDER, CANDIDATES_PLACEHOLDER):
            if placeholder not in template:
                raise DataError(f"{path}: template {index} lacks the placeholder {placeholder}")
    return Templates(templates, quote_items=True)


# ----------------------------------------------------------------------------------------------
# Finding a dataset's files


@dataclass(frozen=True)
class DataFiles:
    """Resolved paths of a run's data: split files (None when not needed) and the prompt file."""

    train: Path | None
    val: Path | None
    test: Path | None
    prompt: Path
    domain: str


def dataset_dir(dataset: str) -> Path:
    """`data/<name>` for a named dataset (`lastfm`, or `lastfm-original` for its original-candidates twin); a folder
    path (holding train/val/test.json) is used as is."""
    if dataset not in REAL_DATASETS + (SYNTHETIC_DATASET,) and Path(dataset).is_dir():
        return Path(dataset)
    return DATA_ROOT / dataset


def ensure_dataset(dataset: str) -> Path:
    """Return the folder of a named dataset, generating the synthetic one on first use.

    Real datasets are never downloaded implicitly here: the error says which command prepares them.
    """
    folder = dataset_dir(dataset)
    if folder != DATA_ROOT / dataset:
        return folder
    base = dataset.removesuffix("-original")  # NAME-original: NAME with the original code's candidates
    if (folder / "train.json").exists():
        if base in DRAWN_CANDIDATES_DATASETS:
            _check_candidates_match_the_name(folder, dataset, base)
        return folder
    if dataset == SYNTHETIC_DATASET:
        from data import synthetic  # numpy: imported only when the synthetic data is generated

        synthetic.generate(folder)
        return folder
    if dataset in REAL_DATASETS or (base != dataset and base in DRAWN_CANDIDATES_DATASETS):
        candidates = " --candidates original" if base != dataset else ""
        raise DataError(
            f"{folder}: dataset '{dataset}' is not prepared; run `python -m data.prepare --dataset {base}{candidates}` "
            "(add --raw_dir DIR for a local copy of the raw archive), or use --dataset synthetic"
        )
    raise DataError(f"unknown dataset '{dataset}': use one of {', '.join(REAL_DATASETS + (SYNTHETIC_DATASET,))} "
                    "(NAME-original for NAME's original candidates) or give --train_file/--val_file/--test_file")


def _check_candidates_match_the_name(folder: Path, dataset: str, base: str) -> None:
    """data/NAME holds per-sample candidates and data/NAME-original the original code's: a folder prepared before
    per-sample became the default (or moved by hand) would otherwise label results with the wrong protocol."""
    wanted = "original" if base != dataset else "per_sample"
    found = candidate_protocol(folder)
    if found in ("per_sample", "original") and found != wanted:
        move = f"data/{base}-original" if found == "original" else f"data/{base}"
        prepare = f"python -m data.prepare --dataset {base}" + (" --candidates original" if wanted == "original" else "")
        raise DataError(f"{folder}: holds {found} candidates but '{dataset}' means {wanted} ones (prepared before "
                        f"per-sample candidates became data.prepare's default?): move it to {move}, or run `{prepare}`")


def _dataset_domain(folder: Path, dataset: str) -> str:
    stats = folder / "stats.json"
    if stats.exists():
        domain = json.loads(stats.read_text(encoding="utf-8")).get("domain")
        if domain:
            return domain
    return DOMAIN_OF_DATASET.get(dataset.removesuffix("-original"), "music")


def candidate_protocol(folder: Path) -> str:
    """How a prepared folder's negatives were drawn, from its stats.json: `per_sample`, `original` (seeded by the
    target, the original code's: it gives the answer away, data/README.md), `release` (the original release's
    files, read as they are), `synthetic` (data/synthetic.py: uniform per sample) or `unknown` (no stats.json,
    e.g. files written by hand)."""
    path = Path(folder) / "stats.json"
    stats = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    protocol = stats.get("protocol", {})
    if protocol.get("candidate_protocol"):
        return protocol["candidate_protocol"]
    if "candidate_rng" in protocol:  # folders prepared before candidate_protocol was written
        return "per_sample" if "user_id" in protocol["candidate_rng"] else "original"
    if stats.get("dataset") == "lastfm-sdpo":
        return "release"
    return "synthetic" if "best_hr@1" in stats else "unknown"


def resolve_data_files(
    dataset: str | None = None,
    train_file: str | None = None,
    val_file: str | None = None,
    test_file: str | None = None,
    prompt_path: str | None = None,
    splits: Iterable[str] = ("train", "val", "test"),
) -> DataFiles:
    """Find split files for a run: explicit paths win over the named dataset's prepared files.

    `splits` names the splits the stage needs; the others stay None. The prompt file defaults to the
    dataset's domain template (music for unknown domains).
    """
    explicit = {"train": train_file, "val": val_file, "test": test_file}
    needed = [split for split in splits if not explicit[split]]
    folder = ensure_dataset(dataset) if (dataset and needed) else (dataset_dir(dataset) if dataset else None)
    if needed and folder is None:
        raise DataError(f"no data given: pass --dataset NAME or --{needed[0]}_file PATH")
    paths: dict[str, Path | None] = {}
    for split in ("train", "val", "test"):
        if split not in splits:
            paths[split] = None
        elif explicit[split]:
            paths[split] = Path(explicit[split])
        else:
            paths[split] = folder / f"{split}.json"
    domain = _dataset_domain(folder, dataset) if folder else "music"
    prompt = Path(prompt_path) if prompt_path else PROMPT_ROOT / f"{domain}.txt"
    for split in splits:
        if not paths[split].exists():
            raise DataError(f"{paths[split]}: data file not found")
    return DataFiles(paths["train"], paths["val"], paths["test"], prompt, domain)


# ----------------------------------------------------------------------------------------------
# Prompts and rows


def _stable_int(*parts: object) -> int:
    digest = hashlib.sha256("\x1f".join(str(part) for part in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")


def format_items(names: Sequence[str], quoted: bool = True) -> str:
    """Items as they appear in a prompt: quoted and comma-separated (names may contain commas), or
    with `quoted=False` joined with ', ' as the original release does."""
    return ", ".join(f'"{name}"' if quoted else name for name in names)


def build_prompt(record: Record, templates: Sequence[str], seed: int = 0, template_of: Record | None = None) -> str:
    """Fill one template with the record; the template is chosen by a hash of the record and the seed
    (of `template_of` instead, when given: an edited record keeps its original's template).

    Items are quoted unless `templates` is a `Templates` read from an original-format file.
    """
    template = templates[_stable_int("template", seed, (template_of or record).key) % len(templates)]
    quoted = getattr(templates, "quote_items", True)
    values = {HISTORY_PLACEHOLDER: format_items(record.history, quoted),
              CANDIDATES_PLACEHOLDER: format_items(record.candidates, quoted)}
    # One pass over the template: an item named like a placeholder is never filled in itself.
    return _PLACEHOLDER_PATTERN.sub(lambda match: values[match.group(0)], template)


def completion_text(name: str) -> str:
    """The completion for an item: a space then the name (the prompt ends with the answer cue)."""
    return " " + name


def sample_negatives(record: Record, neg_num: int, seed: int = 0) -> list[str]:
    """Draw `neg_num` distinct non-target candidates, deterministically from the record and the seed."""
    pool = [name for name in record.candidates if name != record.target]
    if neg_num > len(pool):
        raise DataError(f"neg_num={neg_num} is larger than the {len(pool)} non-target candidates of a record")
    return random.Random(_stable_int("negatives", seed, record.key)).sample(pool, neg_num)


def check_neg_num(records: Sequence[Record], neg_num: int, path: str | Path) -> None:
    """Fail early, naming the record, when a record has fewer non-target candidates than `neg_num`."""
    if neg_num < 1:
        raise DataError(f"neg_num must be at least 1, got {neg_num}")
    for index, record in enumerate(records):
        if len(record.candidates) - 1 < neg_num:
            raise DataError(
                f"{path}: record {index}: field 'itemList' has {len(record.candidates) - 1} non-target "
                f"candidates, fewer than neg_num={neg_num}"
            )


def build_sft_rows(records: Sequence[Record], templates: Sequence[str], seed: int = 0) -> list[dict]:
    """Rows `{"prompt", "completion"}`; the completion is the target without EOS (added at tokenization)."""
    return [
        {"prompt": build_prompt(record, templates, seed), "completion": completion_text(record.target)}
        for record in records
    ]


def build_preference_rows(
    records: Sequence[Record], templates: Sequence[str], neg_num: int, seed: int = 0
) -> list[dict]:
    """Rows `{"prompt", "chosen", "rejected": [neg_num names]}` with negatives from `sample_negatives`."""
    return [
        {
            "prompt": build_prompt(record, templates, seed),
            "chosen": completion_text(record.target),
            "rejected": [completion_text(name) for name in sample_negatives(record, neg_num, seed)],
        }
        for record in records
    ]


# ----------------------------------------------------------------------------------------------
# Tokenization


def encode_prompt(tokenizer, prompt: str, max_prompt_length: int | None = None) -> list[int]:
    """Token ids of a prompt (with the tokenizer's BOS), cut from the left to `max_prompt_length`.

    Cutting from the left drops the oldest history first and keeps the candidates and the answer cue.
    The BOS token, if any, is kept in front.
    """
    ids = tokenizer(prompt)["input_ids"]
    if max_prompt_length is not None and len(ids) > max_prompt_length:
        bos = tokenizer.bos_token_id
        keep_bos = bos is not None and ids[0] == bos
        tail = ids[len(ids) - (max_prompt_length - keep_bos):]
        ids = ([bos] if keep_bos else []) + tail
    return ids


def encode_completion(tokenizer, prompt: str, completion: str) -> list[int]:
    """Token ids of a completion followed by EOS, as they follow the prompt's ids.

    The completion is tokenized inside `prompt + completion` and split off where the prompt's own
    tokens end, so training sees the same ids that generation after the prompt would produce; when
    the boundary merges tokens, it falls back to tokenizing the completion alone.
    """
    return encode_completions(tokenizer, prompt, [completion])[0]


def encode_completions(tokenizer, prompt: str, completions: Sequence[str]) -> list[list[int]]:
    """`encode_completion` of several completions of one prompt, tokenized in one batched call."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    encoded = []
    for completion, full_ids in zip(completions, tokenizer([prompt + c for c in completions])["input_ids"]):
        if full_ids[: len(prompt_ids)] == prompt_ids and len(full_ids) > len(prompt_ids):
            ids = full_ids[len(prompt_ids):]
        else:
            ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
        encoded.append(list(ids) + [tokenizer.eos_token_id])
    return encoded


def tokenize_sft_row(tokenizer, row: dict, max_prompt_length: int | None = None,
                     train_on_inputs: bool = False) -> dict:
    """`{"input_ids", "labels"}` for SFT: labels are -100 on the prompt, so loss is on the completion (the
    paper's SFT); with `train_on_inputs` every token is labelled (a language-modelling loss on the prompt too)."""
    prompt_ids = encode_prompt(tokenizer, row["prompt"], max_prompt_length)
    completion_ids = encode_completion(tokenizer, row["prompt"], row["completion"])
    return {
        "input_ids": prompt_ids + completion_ids,
        "labels": (list(prompt_ids) if train_on_inputs else [-100] * len(prompt_ids)) + completion_ids,
    }


def tokenize_preference_row(tokenizer, row: dict, max_prompt_length: int | None = None) -> dict:
    """`{"prompt_input_ids", "completion_input_ids": [1 + N lists, chosen first]}` for the S-DPO trainer."""
    completions = [row["chosen"], *row["rejected"]]
    return {
        "prompt_input_ids": encode_prompt(tokenizer, row["prompt"], max_prompt_length),
        "completion_input_ids": encode_completions(tokenizer, row["prompt"], completions),
    }


# ----------------------------------------------------------------------------------------------
# Metrics


def _occurrences(name: str, text: str) -> list[tuple[int, int]]:
    """Spans `[start, end)` of every (possibly overlapping) occurrence of `name` in `text`."""
    spans, start = [], text.find(name)
    while start != -1:
        spans.append((start, start + len(name)))
        start = text.find(name, start + 1)
    return spans


def candidates_in_output(output: str, candidates: Sequence[str]) -> list[str]:
    """The candidate names that appear in a generated text, in candidate order.

    An occurrence of a name that lies inside an occurrence of a longer candidate name is not counted
    (output "Muse Revival" with candidates "Muse" and "Muse Revival" names one item), but the shorter
    name still counts when it also appears on its own elsewhere ("Muse Revival, then Muse" names two).
    """
    spans = {name: _occurrences(name, output) for name in candidates if name}
    longer = [(start, end) for name_spans in spans.values() for start, end in name_spans]

    def inside_longer(start: int, end: int) -> bool:
        return any(s <= start and end <= e and e - s > end - start for s, e in longer)

    return [name for name, name_spans in spans.items() if any(not inside_longer(*span) for span in name_spans)]


def prediction_of(output: str, candidates: Sequence[str]) -> str | None:
    """The single candidate named by the output, or None when it names none or several (invalid)."""
    found = candidates_in_output(output, candidates)
    return found[0] if len(found) == 1 else None


def recommendation_metrics(predictions: Sequence[str | None], targets: Sequence[str]) -> dict:
    """HR@1 and ValidRatio over all test prompts: invalid outputs count as misses, not as skipped."""
    n = len(targets)
    if n == 0:
        return {"hr@1": 0.0, "valid_ratio": 0.0, "n": 0}
    valid = sum(prediction is not None for prediction in predictions)
    hits = sum(prediction == target for prediction, target in zip(predictions, targets))
    return {"hr@1": hits / n, "valid_ratio": valid / n, "n": n}


def original_rule_metrics(outputs: Sequence[str], records: Sequence[Record]) -> dict:
    """HR@1 and ValidRatio under the original release's counting rule, as `hr@1_original` and
    `valid_ratio_original`.

    The original counts an output valid when exactly one candidate name occurs in it as a substring
    (a name inside a longer candidate name counts too, so "Muse Revival" names both "Muse" and "Muse
    Revival" and is invalid), and a hit when it is valid and the target occurs in it. Divided by all
    prompts. `recommendation_metrics` differs only for names inside longer candidate names.
    """
    n = len(records)
    valid = hits = 0
    for output, record in zip(outputs, records):
        if sum(name in output for name in record.candidates) == 1:
            valid += 1
            hits += record.target in output
    return {"hr@1_original": hits / n if n else 0.0, "valid_ratio_original": valid / n if n else 0.0}


def sample_records(records: Sequence[Record], max_samples: int | None, seed: int = 0) -> list[Record]:
    """A seeded random subset of `max_samples` records (in file order), or all of them.

    Splits hold consecutive sliding windows of each user, so the first N records would come from one or
    two users; a random sample spreads over the whole split. The same (split, n, seed) always gives the
    same records, so every method of a comparison is evaluated on the same prompts.
    """
    if not max_samples or max_samples >= len(records):
        return list(records)
    if max_samples < 0:
        raise DataError(f"max_samples must be positive, got {max_samples}")
    chosen = sorted(random.Random(_stable_int("sample", seed, len(records))).sample(range(len(records)), max_samples))
    return [records[i] for i in chosen]


def rank_of_target(scores: Sequence[float], candidates: Sequence[str], target: str) -> int:
    """1-based rank of the target when candidates are sorted by score, highest first.

    Ties are broken by candidate order (an earlier candidate ranks higher), as `argmax` does, so the
    rank-1 candidate is the one a top-1 prediction would name.
    """
    t = candidates.index(target)
    return 1 + sum(score > scores[t] or (score == scores[t] and i < t) for i, score in enumerate(scores))


RANKING_CUTOFFS = (1, 3, 5, 10)
NDCG_CUTOFFS = (5, 10)


def ranking_metrics(ranks: Sequence[int]) -> dict:
    """HR@K, NDCG@K and MRR of the target's 1-based rank among each prompt's candidates.

    One relevant item per prompt, so NDCG@K = 1 / log2(rank + 1) when rank <= K, else 0. Keys:
    `rank_hr@K`, `rank_ndcg@K`, `rank_mrr`, `n`.
    """
    import math

    n = len(ranks)
    metrics: dict = {}
    for k in RANKING_CUTOFFS:
        metrics[f"rank_hr@{k}"] = sum(rank <= k for rank in ranks) / n if n else 0.0
    for k in NDCG_CUTOFFS:
        metrics[f"rank_ndcg@{k}"] = sum(1 / math.log2(rank + 1) for rank in ranks if rank <= k) / n if n else 0.0
    metrics["rank_mrr"] = sum(1 / rank for rank in ranks) / n if n else 0.0
    metrics["n"] = n
    return metrics


def popularity_scores(train_records: Sequence[Record], records: Sequence[Record]) -> list[list[float]]:
    """For each record, each candidate's count as a true next item in the training split."""
    counts: dict[str, int] = {}
    for record in train_records:
        counts[record.target] = counts.get(record.target, 0) + 1
    return [[float(counts.get(name, 0)) for name in record.candidates] for record in records]


def popularity_predictions(train_records: Sequence[Record], records: Sequence[Record]) -> list[str]:
    """For each record, the candidate that is most often the true next item in the training split.

    Ties (most often: candidates never seen as a target) go to the earliest in the candidate list,
    which the data preparation shuffled.
    """
    return [record.candidates[max(range(len(scores)), key=scores.__getitem__)]
            for record, scores in zip(records, popularity_scores(train_records, records))]


def random_choice_metrics(records: Sequence[Record]) -> dict:
    """Expected metrics of a uniformly random choice / ordering of the candidates (exact, not sampled):
    HR@1 and ValidRatio of naming one candidate, and the ranking metrics of a random permutation."""
    import math

    n = len(records)
    if not n:
        return {"hr@1": 0.0, "valid_ratio": 0.0, "n": 0}
    metrics = {"hr@1": sum(1 / len(record.candidates) for record in records) / n, "valid_ratio": 1.0}
    # The target's rank is uniform over 1..C, so each metric is the mean of its value over the C ranks.
    per_record = [ranking_metrics(range(1, len(record.candidates) + 1)) for record in records]
    for key in per_record[0]:
        if key != "n":
            metrics[key] = sum(values[key] for values in per_record) / n
    metrics["n"] = n
    return metrics


def reference_metrics(train_records: Sequence[Record], records: Sequence[Record]) -> dict[str, dict]:
    """The two reference rows of every results table, on the given evaluation records: `random` (exact
    expectation) and `popularity` (candidates ranked by how often each is a true next item in training)."""
    popularity = recommendation_metrics(popularity_predictions(train_records, records),
                                        [record.target for record in records])
    popularity.update(ranking_metrics(popularity_ranks(train_records, records)))
    return {"random": random_choice_metrics(records), "popularity": popularity}


def popularity_ranks(train_records: Sequence[Record], records: Sequence[Record]) -> list[int]:
    """The target's rank at each record when its candidates are ordered by popularity (`popularity_scores`)."""
    scores = popularity_scores(train_records, records)
    return [rank_of_target(values, record.candidates, record.target) for values, record in zip(scores, records)]
