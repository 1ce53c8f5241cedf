"""Property-based tests (hypothesis): no input crashes a loader, and valid records round-trip.

Malformed input of any shape must end in the one-line error of its reader (`DataError`,
`DataPreparationError`), never in another exception; any valid record must survive the JSON file,
prompt building and tokenization unchanged.
"""

from __future__ import annotations

import gzip
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import data_interface as di
from data.errors import DataPreparationError
from data.goodreads import read_goodreads
from data.lastfm import LASTFM_ARTISTS, LASTFM_TIMESTAMPS, read_lastfm
from data.movielens import ML_ITEMS, ML_RATINGS, read_movielens
from data.raw_files import DirSource

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=25,
)
# Record-shaped objects whose fields are sometimes right and sometimes not.
field_values = st.one_of(st.text(max_size=20), st.lists(st.text(max_size=8), max_size=22), st.integers(), st.none())
record_like = st.dictionaries(st.sampled_from(["historyList", "itemList", "trueSelection", "other"]), field_values)

# Item names: no ':' (the history separator is '::'), no '"' (names are quoted in prompts), no '<' (a
# name spelled like a special token, e.g. '<unk>', is encoded as that token), no '#' (kept for the suffix
# below), no surrounding spaces.
names = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Zl", "Zp"),
                                       exclude_characters=':"<#'),
                min_size=1, max_size=14).map(str.strip).filter(bool)


@st.composite
def valid_records(draw):
    # Each name ends in its own "#i#" (names hold no '#'), so none is a substring of another (the candidate
    # matching needs that) without filtering most draws away.
    pool = [f"{name}#{i}#" for i, name in enumerate(draw(st.lists(names, min_size=23, max_size=30)))]
    history = draw(st.lists(st.sampled_from(pool), min_size=3, max_size=10))
    candidates = draw(st.permutations(pool))[:20]
    target = draw(st.sampled_from(candidates))
    as_string = draw(st.booleans())
    return {"historyList": "::".join(history) if as_string else history, "itemList": list(candidates),
            "trueSelection": target}


def _write(text: str | bytes, name: str = "split.json") -> Path:
    folder = Path(tempfile.mkdtemp(prefix="sdpo-prop-"))
    path = folder / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def _one_line(error: Exception, path: Path) -> None:
    message = str(error)
    assert "\n" not in message and str(path) in message


@SETTINGS
@given(st.one_of(json_values, st.lists(record_like, min_size=1, max_size=4)))
def test_any_json_gives_records_or_a_one_line_data_error(value):
    path = _write(json.dumps(value))
    try:
        records = di.load_records(path)
    except di.DataError as error:
        _one_line(error, path)
    else:
        assert records and all(record.target in record.candidates for record in records)


@SETTINGS
@given(st.binary(max_size=200))
def test_any_bytes_give_records_or_a_one_line_data_error(blob):
    path = _write(blob)
    try:
        di.load_records(path)
    except di.DataError as error:
        _one_line(error, path)


@SETTINGS
@given(st.lists(valid_records(), min_size=1, max_size=3), st.integers(0, 3))
def test_valid_records_round_trip_through_the_file_and_the_prompt(raws, seed):
    records = di.load_records(_write(json.dumps(raws)))
    templates = di.load_templates(Path(__file__).resolve().parents[1] / "prompts" / "music.txt")
    for raw, record in zip(raws, records):
        history = raw["historyList"].split("::") if isinstance(raw["historyList"], str) else raw["historyList"]
        assert record.history == tuple(history) and record.candidates == tuple(raw["itemList"])
        assert record.target == raw["trueSelection"]
        prompt = di.build_prompt(record, templates, seed)
        assert prompt == di.build_prompt(record, templates, seed)  # the same prompt in every stage
        assert all(f'"{name}"' in prompt for name in record.candidates + record.history)
        for negatives in (1, 3, 19):
            chosen = di.sample_negatives(record, negatives, seed)
            assert len(set(chosen)) == negatives and record.target not in chosen
            assert set(chosen) <= set(record.candidates)


@pytest.fixture(scope="module")
def tokenizer():
    import models

    corpus = ["Given the history, pick one: " + " ".join(f"item{i}" for i in range(50)) + " Answer:"]
    return models.build_tiny_tokenizer(corpus * 4, [f"item{i}" for i in range(30)], bpe_vocab_size=400)


@SETTINGS
@given(valid_records(), st.integers(0, 3))
def test_any_valid_record_tokenizes_back_to_its_prompt_and_completion(tokenizer, raw, seed):
    record = di.load_records(_write(json.dumps([raw])))[0]
    templates = di.load_templates(Path(__file__).resolve().parents[1] / "prompts" / "music.txt")
    row = di.build_preference_rows([record], templates, 3, seed)[0]
    tokens = di.tokenize_preference_row(tokenizer, row)
    assert tokenizer.decode(tokens["prompt_input_ids"], skip_special_tokens=True) == row["prompt"]
    completions = [row["chosen"], *row["rejected"]]
    assert len(tokens["completion_input_ids"]) == 4
    for ids, text in zip(tokens["completion_input_ids"], completions):
        assert ids[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(ids[:-1]) == text


template_lines = st.lists(st.one_of(st.text(max_size=30), st.sampled_from(
    ["---", "# comment", "[HistoryHere] [CansHere] Answer:", "[HistoryHere]", "[CansHere]", ""])), max_size=8)


@SETTINGS
@given(template_lines)
def test_any_prompt_file_gives_templates_or_a_one_line_data_error(lines):
    path = _write("\n".join(lines), "prompts.txt")
    try:
        templates = di.load_templates(path)
    except di.DataError as error:
        _one_line(error, path)
    else:
        assert templates and all(di.HISTORY_PLACEHOLDER in t and di.CANDIDATES_PLACEHOLDER in t for t in templates)


raw_rows = st.lists(st.lists(st.one_of(st.text(max_size=10), st.integers(-5, 10**6).map(str)), max_size=25).map(
    lambda cells: "\t".join(cells)), max_size=6)


def _raw_source(files: dict[str, str | bytes]):
    folder = Path(tempfile.mkdtemp(prefix="sdpo-raw-"))
    for name, content in files.items():
        data = content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass")
        (folder / name).write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    return DirSource(folder)


@SETTINGS
@given(raw_rows, raw_rows)
def test_any_lastfm_files_give_data_or_a_one_line_error(artists, tags):
    source = _raw_source({LASTFM_ARTISTS: "\n".join(artists), LASTFM_TIMESTAMPS: "\n".join(tags)})
    try:
        data = read_lastfm(source)
    except DataPreparationError as error:
        assert "\n" not in str(error) and str(source.folder) in str(error)
    else:
        assert all(artist in data.names for _, artist, _ in data.events)


@SETTINGS
@given(raw_rows, st.lists(st.text(max_size=60), max_size=4), st.binary(max_size=60))
def test_any_movielens_files_give_data_or_a_one_line_error(ratings, items, garbage):
    files = {ML_RATINGS: "\n".join(ratings) + "\n", ML_ITEMS: "\n".join(items)}
    if garbage:
        files[ML_RATINGS] = garbage
    source = _raw_source(files)
    try:
        data = read_movielens(source)
    except DataPreparationError as error:
        assert "\n" not in str(error) and str(source.folder) in str(error)
    else:
        assert all(item in data.names for _, item, _ in data.events)


@SETTINGS
@given(st.lists(st.one_of(json_values.map(json.dumps), st.text(max_size=30)), max_size=5),
       st.lists(st.one_of(json_values.map(json.dumps), st.text(max_size=30)), max_size=5), st.booleans())
def test_any_goodreads_files_give_data_or_a_one_line_error(books, interactions, corrupt):
    genre = "poetry"
    books_file, interactions_file = f"goodreads_books_{genre}.json.gz", f"goodreads_interactions_{genre}.json.gz"
    files: dict[str, str | bytes] = {books_file: "\n".join(books), interactions_file: "\n".join(interactions)}
    source = _raw_source(files)
    if corrupt:  # a truncated gzip stream
        path = source.folder / interactions_file
        path.write_bytes(path.read_bytes()[:-6])
    try:
        data = read_goodreads(source, genre)
    except DataPreparationError as error:
        assert "\n" not in str(error) and str(source.folder) in str(error)
    else:
        assert all(book in data.names for _, book, _ in data.events)
