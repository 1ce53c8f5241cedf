"""Data loading, validation, prompts, negative sampling, tokenization and metrics."""

from __future__ import annotations

import json

import pytest

import data_interface as di

CANDIDATES = [f"Artist {chr(ord('A') + i)}" for i in range(20)]


def record(history="Artist A::Artist B::Artist C", items=None, target="Artist D"):
    return {"historyList": history, "itemList": items if items is not None else list(CANDIDATES),
            "trueSelection": target}


def write(tmp_path, payload, name="split.json"):
    path = tmp_path / name
    path.write_text(json.dumps(payload) if not isinstance(payload, str) else payload, encoding="utf-8")
    return path


def test_both_history_forms_load_the_same(tmp_path):
    joined = di.load_records(write(tmp_path, [record()], "a.json"))
    listed = di.load_records(write(tmp_path, [record(history=["Artist A", "Artist B", "Artist C"])], "b.json"))
    assert joined == listed
    assert joined[0].history == ("Artist A", "Artist B", "Artist C")
    assert joined[0].target == "Artist D" and len(joined[0].candidates) == 20


@pytest.mark.parametrize(
    "payload, message",
    [
        ("{not json", "not valid JSON"),
        ({"historyList": "a"}, "expected a JSON list of records"),
        ([record(), {"itemList": CANDIDATES, "trueSelection": "Artist D"}], "record 1: missing field 'historyList'"),
        ([{"historyList": "a::b::c", "trueSelection": "Artist D"}], "record 0: missing field 'itemList'"),
        ([{"historyList": "a::b::c", "itemList": CANDIDATES}], "record 0: missing field 'trueSelection'"),
        ([record(target="Nobody")], "record 0: field 'trueSelection' 'Nobody' is not among the candidates"),
        ([record(items=CANDIDATES[:19] + ["Artist A"])], "record 0: field 'itemList' holds duplicate candidate"),
        ([record(items=CANDIDATES[:19] + ["  "])], "record 0: field 'itemList' holds an empty name (candidate 19)"),
        ([record(history="")], "record 0: field 'historyList' is empty"),
        ([record(history=[])], "record 0: field 'historyList' is empty"),
    ],
)
def test_bad_records_get_one_line_naming_file_record_and_field(tmp_path, payload, message):
    path = write(tmp_path, payload)
    with pytest.raises(di.DataError) as error:
        di.load_records(path)
    text = str(error.value)
    assert str(path) in text and message in text and "\n" not in text


def test_missing_data_file_is_named(tmp_path):
    with pytest.raises(di.DataError, match="missing.json: data file not found"):
        di.load_records(tmp_path / "missing.json")


def test_templates_split_strip_comments_and_need_both_placeholders(tmp_path):
    path = write(tmp_path, "# comment\nA [HistoryHere] B [CansHere]\nAnswer:\n---\n[HistoryHere]|[CansHere] Answer:\n")
    assert di.load_templates(path) == ["A [HistoryHere] B [CansHere]\nAnswer:", "[HistoryHere]|[CansHere] Answer:"]
    bad = write(tmp_path, "ok [HistoryHere] [CansHere]\n---\nno candidates [HistoryHere]\n", "bad.txt")
    with pytest.raises(di.DataError, match=r"bad.txt: template 1 lacks the placeholder \[CansHere\]"):
        di.load_templates(bad)


ORIGINAL_STYLE = (
    "This person has listened to [HistoryHere] recently. Choose the answer from: [CansHere]. Answer: \n"
    "Given [HistoryHere], which of [CansHere] comes next? Answer:\n"
)


def test_original_prompt_files_read_one_template_per_line_with_plain_joined_items(tmp_path):
    path = write(tmp_path, ORIGINAL_STYLE + "\n", "original.txt")
    templates = di.load_templates(path)
    assert list(templates) == [line.strip() for line in ORIGINAL_STYLE.splitlines()]
    assert templates.quote_items is False
    rec = di.Record(("Muse", "AC/DC, Live"), ("Muse", "Blur", "Oasis"), "Blur")
    prompts = {di.build_prompt(rec, templates, seed) for seed in range(20)}
    assert prompts == {
        "This person has listened to Muse, AC/DC, Live recently. Choose the answer from: Muse, Blur, Oasis. Answer:",
        "Given Muse, AC/DC, Live, which of Muse, Blur, Oasis comes next? Answer:",
    }
    ours = di.load_templates(di.PROMPT_ROOT / "music.txt")
    assert ours.quote_items is True and '"Muse", "Blur", "Oasis"' in di.build_prompt(rec, ours)


def test_an_item_named_like_a_placeholder_is_not_filled_in():
    """Found by the round-trip property: the history held an item called "[CansHere]"."""
    rec = di.Record(("G", "[CansHere]"), ("G", "[HistoryHere]", "B"), "G")
    assert di.build_prompt(rec, ["Heard [HistoryHere]. Pick from [CansHere]:"]) == (
        'Heard "G", "[CansHere]". Pick from "G", "[HistoryHere]", "B":')
    prompt = di.build_prompt(rec, di.load_templates(di.PROMPT_ROOT / "music.txt"))
    assert prompt.count('"[CansHere]"') == 1 and prompt.count('"[HistoryHere]"') == 1


def test_prompt_format_detection_on_generated_files(tmp_path):
    """Property: k >= 2 one-line templates, whatever blank lines surround them, are read in the original
    format; the same templates joined by '---' lines, or a single one-line template, in this project's;
    both give the same templates."""
    import random

    rng = random.Random(0)
    words = ["Answer:", "next", "artist", "from", "the", "options", "-", ",", "?", "#"]
    for trial in range(200):
        k = rng.randint(1, 5)
        templates = []
        for _ in range(k):
            parts = [rng.choice(words) for _ in range(rng.randint(0, 6))] + [di.HISTORY_PLACEHOLDER, di.CANDIDATES_PLACEHOLDER]
            rng.shuffle(parts)
            templates.append(("Q " if parts[0] == "#" else "") + " ".join(parts))  # '#' lines are our comments
        blank = lambda: "\n" * rng.randint(0, 2)
        one_per_line = blank() + "".join(t + "\n" + blank() for t in templates)
        separated = "\n---\n".join(templates) + "\n"
        read_original = di.load_templates(write(tmp_path, one_per_line, f"o{trial}.txt"))
        read_ours = di.load_templates(write(tmp_path, separated, f"s{trial}.txt"))
        assert list(read_original) == templates and list(read_ours) == templates
        assert read_original.quote_items is (k == 1)
        assert read_ours.quote_items is True


def test_every_shipped_template_ends_with_the_answer_cue():
    for domain in ("music", "movies", "books"):
        templates = di.load_templates(di.PROMPT_ROOT / f"{domain}.txt")
        assert len(templates) >= 3
        assert all(template.endswith("Answer:") for template in templates)


def test_prompt_and_negatives_are_deterministic_and_record_specific(tmp_path):
    records = di.load_records(write(tmp_path, [record(), record(history="Artist E::Artist F::Artist G")]))
    templates = di.load_templates(di.PROMPT_ROOT / "music.txt")
    first = di.build_preference_rows(records, templates, neg_num=3, seed=7)
    again = di.build_preference_rows(records, templates, neg_num=3, seed=7)
    assert first == again
    sft_rows = di.build_sft_rows(records, templates, seed=7)
    assert [row["prompt"] for row in sft_rows] == [row["prompt"] for row in first]  # same prompt in every stage
    for row, rec in zip(first, records):
        assert row["chosen"] == " " + rec.target
        rejected = [name.strip() for name in row["rejected"]]
        assert len(set(rejected)) == 3 and rec.target not in rejected and set(rejected) <= set(rec.candidates)
    assert '"Artist A", "Artist B", "Artist C"' in first[0]["prompt"]  # each prompt holds its own record's history
    assert '"Artist E", "Artist F", "Artist G"' in first[1]["prompt"]
    seeds = {tuple(di.sample_negatives(records[0], 3, seed)) for seed in range(20)}
    assert len(seeds) > 1  # the seed matters
    # and the record: the two records share their candidates, yet draw their own negatives at (almost) every seed
    assert sum(di.sample_negatives(records[0], 3, seed) != di.sample_negatives(records[1], 3, seed)
               for seed in range(20)) >= 18


def test_neg_num_larger_than_non_target_candidates_is_refused(tmp_path):
    path = write(tmp_path, [record()])
    records = di.load_records(path)
    di.check_neg_num(records, 19, path)
    with pytest.raises(di.DataError, match="record 0: field 'itemList' has 19 non-target candidates, fewer than neg_num=20"):
        di.check_neg_num(records, 20, path)


class CharTokenizer:
    """A stand-in tokenizer: one id per character, BOS=1, EOS=2."""

    bos_token_id, eos_token_id = 1, 2

    def __call__(self, text, add_special_tokens=True):
        if isinstance(text, list):  # a batch, as Hugging Face tokenizers take it
            return {"input_ids": [self(one, add_special_tokens)["input_ids"] for one in text]}
        ids = [ord(ch) + 10 for ch in text]
        return {"input_ids": ([self.bos_token_id] if add_special_tokens else []) + ids}


def test_tokenization_masks_the_prompt_and_ends_with_eos():
    row = {"prompt": "abcdef Answer:", "completion": " Muse"}
    encoded = di.tokenize_sft_row(CharTokenizer(), row)
    n_prompt = 1 + len(row["prompt"])
    assert encoded["labels"][:n_prompt] == [-100] * n_prompt
    assert encoded["labels"][n_prompt:] == [ord(ch) + 10 for ch in " Muse"] + [2]
    assert encoded["input_ids"][n_prompt:] == encoded["labels"][n_prompt:]


def test_train_on_inputs_labels_every_token_and_keeps_the_input_ids():
    row = {"prompt": "abcdef Answer:", "completion": " Muse"}
    masked = di.tokenize_sft_row(CharTokenizer(), row)
    full = di.tokenize_sft_row(CharTokenizer(), row, train_on_inputs=True)
    assert full["input_ids"] == masked["input_ids"]
    assert full["labels"] == full["input_ids"]
    assert -100 not in full["labels"]


def test_long_prompts_are_cut_from_the_left_keeping_bos():
    ids = di.encode_prompt(CharTokenizer(), "0123456789Answer:", max_prompt_length=8)
    assert ids == [1] + [ord(ch) + 10 for ch in "Answer:"]


def test_preference_row_tokenization_puts_the_chosen_first():
    row = {"prompt": "p:", "chosen": " a", "rejected": [" bb", " c"]}
    encoded = di.tokenize_preference_row(CharTokenizer(), row)
    assert encoded["prompt_input_ids"] == [1, ord("p") + 10, ord(":") + 10]
    assert [len(ids) for ids in encoded["completion_input_ids"]] == [3, 4, 3]
    assert all(ids[-1] == 2 for ids in encoded["completion_input_ids"])


@pytest.mark.parametrize(
    "output, expected",
    [
        ("Artist D", "Artist D"),  # the target
        ("I suggest Artist K.", "Artist K"),  # valid, not the target
        ("Artist D or Artist E", None),  # two names: invalid
        ("Nobody at all", None),  # no name: invalid
    ],
)
def test_prediction_of_hand_written_generations(output, expected):
    assert di.prediction_of(output, CANDIDATES) == expected


def test_a_name_inside_a_longer_candidate_name_counts_once():
    assert di.prediction_of("Muse Revival", ["Muse", "Muse Revival", "Other"]) == "Muse Revival"
    assert di.prediction_of("Muse", ["Muse", "Muse Revival"]) == "Muse"
    assert di.candidates_in_output("I pick Muse Revival.", ["Muse", "Muse Revival"]) == ["Muse Revival"]


def test_a_shorter_name_mentioned_on_its_own_elsewhere_still_counts():
    names = ["Muse", "Muse Revival", "Other"]
    assert di.candidates_in_output("Muse Revival, or maybe Muse", names) == ["Muse", "Muse Revival"]
    assert di.candidates_in_output("Muse, then Muse Revival", names) == ["Muse", "Muse Revival"]
    assert di.prediction_of("Muse Revival or Muse", names) is None  # two items named: invalid
    # Overlapping longer names: each covers its own occurrence of the shorter one.
    assert di.candidates_in_output("A B C", ["A B", "B C", "B"]) == ["A B", "B C"]


def test_metrics_divide_by_all_prompts():
    metrics = di.recommendation_metrics(["a", None, "c", "x"], ["a", "b", "d", "x"])
    assert metrics == {"hr@1": 0.5, "valid_ratio": 0.75, "n": 4}


def test_metrics_of_no_prompts_are_zero_and_of_one_prompt_are_its_own():
    # No prompts: zeros rather than a division by zero, under the same keys as a non-empty split.
    assert di.recommendation_metrics([], []) == {"hr@1": 0.0, "valid_ratio": 0.0, "n": 0}
    # One prompt is counted like any other (the empty-split guard is n == 0, not n <= 1).
    assert di.recommendation_metrics(["a"], ["a"]) == {"hr@1": 1.0, "valid_ratio": 1.0, "n": 1}


def test_the_original_counting_rule_disagrees_only_on_names_inside_longer_names():
    names = ("Muse", "Muse Revival", "Other")
    records = [di.Record(("h",), names, "Muse Revival"), di.Record(("h",), names, "Muse"),
               di.Record(("h",), names, "Other"), di.Record(("h",), names, "Other")]
    outputs = ["Muse Revival", "Muse", "Other", "Muse and Other"]
    ours = di.recommendation_metrics([di.prediction_of(o, r.candidates) for o, r in zip(outputs, records)],
                                     [r.target for r in records])
    original = di.original_rule_metrics(outputs, records)
    # Ours: "Muse Revival" names one item (a hit); the original sees two names in it (invalid).
    assert ours == {"hr@1": 0.75, "valid_ratio": 0.75, "n": 4}
    assert original == {"hr@1_original": 0.5, "valid_ratio_original": 0.5}
    assert di.original_rule_metrics([], []) == {"hr@1_original": 0.0, "valid_ratio_original": 0.0}


def test_popularity_and_random_reference_points(tmp_path):
    train = [di.Record(("h",), ("x", "y", "z"), "y"), di.Record(("h",), ("x", "y", "z"), "y"),
             di.Record(("h",), ("x", "y", "z"), "z")]
    test = [di.Record(("h",), ("z", "x", "y"), "y"), di.Record(("h",), ("x", "z"), "x")]
    assert di.popularity_predictions(train, test) == ["y", "z"]
    assert di.random_choice_metrics(test)["hr@1"] == pytest.approx((1 / 3 + 1 / 2) / 2)


def _records(n):
    return [di.Record((f"h{i}",), tuple(CANDIDATES), CANDIDATES[i % 20]) for i in range(n)]


def test_sample_records_is_seeded_random_in_file_order_not_the_first_n():
    records = _records(1000)
    sample = di.sample_records(records, 50, seed=0)
    indices = [records.index(r) for r in sample]
    assert len(sample) == 50 and indices == sorted(indices)
    assert indices != list(range(50)) and max(indices) > 500
    assert di.sample_records(records, 50, seed=0) == sample
    assert di.sample_records(records, 50, seed=1) != sample
    assert di.sample_records(records, None) == records and di.sample_records(records, 5000) == records


def test_rank_of_target_breaks_ties_by_candidate_order():
    names = ["a", "b", "c", "d"]
    assert di.rank_of_target([0.0, 3.0, 3.0, 1.0], names, "b") == 1
    assert di.rank_of_target([0.0, 3.0, 3.0, 1.0], names, "c") == 2
    assert di.rank_of_target([0.0, 3.0, 3.0, 1.0], names, "d") == 3
    assert di.rank_of_target([0.0, 3.0, 3.0, 1.0], names, "a") == 4


def test_ranking_metrics_match_hand_computed_values():
    import math

    metrics = di.ranking_metrics([1, 2, 11, 5])
    assert metrics["rank_hr@1"] == 0.25 and metrics["rank_hr@3"] == 0.5
    assert metrics["rank_hr@5"] == 0.75 and metrics["rank_hr@10"] == 0.75
    assert metrics["rank_ndcg@5"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(6)) / 4)
    assert metrics["rank_mrr"] == pytest.approx((1 + 1 / 2 + 1 / 11 + 1 / 5) / 4)
    assert metrics["n"] == 4


def test_random_choice_metrics_are_the_expectation_over_uniform_ranks():
    import math

    metrics = di.random_choice_metrics(_records(3))
    assert metrics["hr@1"] == pytest.approx(1 / 20) and metrics["rank_hr@10"] == pytest.approx(0.5)
    assert metrics["rank_mrr"] == pytest.approx(sum(1 / r for r in range(1, 21)) / 20)
    assert metrics["rank_ndcg@5"] == pytest.approx(sum(1 / math.log2(r + 1) for r in range(1, 6)) / 20)


def test_candidate_protocol_reads_how_a_folder_was_prepared(tmp_path):
    def folder(name, stats):
        path = tmp_path / name
        path.mkdir()
        if stats is not None:
            (path / "stats.json").write_text(json.dumps(stats), encoding="utf-8")
        return path

    assert di.candidate_protocol(folder("new", {"protocol": {"candidate_protocol": "original"}})) == "original"
    # folders prepared before candidate_protocol was written: told apart by the generator's seed
    old = {"protocol": {"candidate_rng": "random.Random(target_id + 1000003 * seed)"}}
    assert di.candidate_protocol(folder("old", old)) == "original"
    per_sample = {"protocol": {"candidate_rng": 'random.Random(f"{seed}:{user_id}:{position}")'}}
    assert di.candidate_protocol(folder("ps", per_sample)) == "per_sample"
    assert di.candidate_protocol(folder("release", {"dataset": "lastfm-sdpo"})) == "release"
    assert di.candidate_protocol(di.ensure_dataset("synthetic")) == "synthetic"
    assert di.candidate_protocol(folder("hand", None)) == "unknown"


def test_an_unprepared_dataset_names_the_command_that_prepares_it(monkeypatch, tmp_path):
    monkeypatch.setattr(di, "DATA_ROOT", tmp_path)
    with pytest.raises(di.DataError, match=r"run `python -m data.prepare --dataset movielens` \("):
        di.ensure_dataset("movielens")
    with pytest.raises(di.DataError, match=r"run `python -m data.prepare --dataset lastfm --candidates original`"):
        di.ensure_dataset("lastfm-original")
    with pytest.raises(di.DataError, match="unknown dataset 'lastfm-sdpo-original'"):
        di.ensure_dataset("lastfm-sdpo-original")
    (tmp_path / "lastfm-original").mkdir()
    (tmp_path / "lastfm-original" / "train.json").write_text("[]", encoding="utf-8")
    assert di.ensure_dataset("lastfm-original") == tmp_path / "lastfm-original"


def test_a_folder_whose_candidates_contradict_its_name_is_refused(monkeypatch, tmp_path):
    """data/lastfm prepared before per-sample candidates became the default holds the original ones: using it as
    `lastfm` would label the results per-sample."""
    monkeypatch.setattr(di, "DATA_ROOT", tmp_path)
    rngs = {"original": "random.Random(target_id + 1000003 * seed)",
            "per_sample": 'random.Random(f"{seed}:{user_id}:{position}")'}
    for name, protocol in (("lastfm", "original"), ("movielens-original", "per_sample"),
                           ("goodreads", "per_sample"), ("lastfm-original", "original")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "train.json").write_text("[]", encoding="utf-8")
        stats = {"domain": "music", "protocol": {"candidate_rng": rngs[protocol]}}  # an old stats.json
        (tmp_path / name / "stats.json").write_text(json.dumps(stats), encoding="utf-8")
    with pytest.raises(di.DataError, match=r"lastfm: holds original candidates but 'lastfm' means per_sample ones.*"
                                           r"move it to data/lastfm-original"):
        di.ensure_dataset("lastfm")
    with pytest.raises(di.DataError, match=r"holds per_sample candidates .* move it to data/movielens, or run "
                                           r"`python -m data.prepare --dataset movielens --candidates original`"):
        di.ensure_dataset("movielens-original")
    assert di.ensure_dataset("goodreads") == tmp_path / "goodreads"
    assert di.ensure_dataset("lastfm-original") == tmp_path / "lastfm-original"
    # an -original folder without stats.json still gets its dataset's prompt template
    assert di._dataset_domain(tmp_path / "nowhere", "movielens-original") == "movies"
