"""QuestionAnsweringDataModule: SQuAD JSON and flat rows, windows of long contexts, answer labels, and its errors."""

import json

import pytest
from helpers import write_rows

from lit_finetune.data.question_answering import QuestionAnsweringDataModule
from lit_finetune.errors import ConfigError, DataError

LONG = " ".join(f"w{i}" for i in range(60)) + " The capital is Paris today."  # ~ 75 tokens: several windows


def squad(*paragraphs: dict, title: str = "t") -> dict:
    return {"version": "1.1", "data": [{"title": title, "paragraphs": list(paragraphs)}]}


def qa(qid: str, question: str, context: str, *texts: str, impossible: bool = False) -> dict:
    answers = [{"text": t, "answer_start": context.index(t)} for t in texts]
    return {"id": qid, "question": question, "answers": answers, **({"is_impossible": True} if impossible else {})}


def write_json(path, obj):
    path.write_text(json.dumps(obj), encoding="utf-8")
    return str(path)


def prepared(tmp_path, stage="fit", **kwargs) -> QuestionAnsweringDataModule:
    kwargs = {"model_name_or_path": "tiny:bert", "cache_dir": str(tmp_path / "cache"), "max_length": 32,
              "doc_stride": 8, "max_question_length": 8, "batch_size": 4, **kwargs}
    dm = QuestionAnsweringDataModule(**kwargs)
    dm.prepare_data()
    dm.setup(stage)
    return dm


def test_long_context_windows_label_the_answer_where_it_is(tmp_path):
    short = "Cats sleep a lot."
    data = squad({"context": LONG, "qas": [qa("far", "Which city is the capital?", LONG, "Paris")]},
                 {"context": short, "qas": [qa("near", "What do cats do a lot?", short, "sleep")]})
    path = write_json(tmp_path / "squad.json", data)
    dm = prepared(tmp_path, train_file=path, validation_file=path)
    train, val = dm.splits["train"], dm.splits["validation"]
    assert dm.meta["examples"] == {"train": 2, "validation": 2} and len(train) == len(val) > 3
    windows = [row for row in val if row["example_id"] == "far"]
    assert len(windows) >= 3 and all(len(row["input_ids"]) <= 32 for row in windows)
    labeled = [row for row in windows if row["start_positions"] > 0]
    assert labeled and len(labeled) < len(windows)  # the answer is in some windows only; the others point at [CLS]
    for row in labeled:
        offsets = row["offset_mapping"]
        assert LONG[offsets[row["start_positions"]][0]:offsets[row["end_positions"]][1]] == "Paris"
    for row in windows:  # question and special tokens have no place in the context
        context_tokens = [i for i, (s, _) in enumerate(row["offset_mapping"]) if s >= 0]
        assert row["offset_mapping"][0] == [-1, -1] and row["token_type_ids"][context_tokens[0]] == 1
    assert train["start_positions"] == val["start_positions"] and "offset_mapping" not in train.column_names

    far, near = dm.val_dataloader()  # eval batches of 8 windows, in order
    assert far["example_id"] == ["far"] * 8 and far["answers"] == [["Paris"]] * 8 and far["context"][0] == LONG
    assert far["offset_mapping"].shape == (*far["input_ids"].shape, 2) and far["offset_mapping"][0, 0].tolist() == [-1, -1]
    assert near["example_id"] == ["near"] and near["input_ids"].shape[1] == len(val[-1]["input_ids"]) < 32  # own length


def test_flat_jsonl_rows_in_hub_columns_match_squad_json(tmp_path):
    context = "The sky is blue and the grass is green."
    rows = [{"id": "a", "title": "t", "context": context, "question": "What colour is the sky?",
             "answers": {"text": ["blue"], "answer_start": [context.index("blue")]}}]
    jsonl = prepared(tmp_path, train_file=str(write_rows(tmp_path / "train.jsonl", rows)),
                     validation_file=str(tmp_path / "train.jsonl"))
    squad_json = prepared(tmp_path, train_file=write_json(tmp_path / "train.json", squad(
        {"context": context, "qas": [qa("a", "What colour is the sky?", context, "blue")]})),
        validation_file=str(tmp_path / "train.json"))
    assert jsonl.splits["validation"][:] == squad_json.splits["validation"][:]


def test_squad_v2_unanswerable_questions_point_at_the_first_token(tmp_path):
    context = "Water boils at 100 degrees."
    path = write_json(tmp_path / "v2.json", squad({"context": context, "qas": [
        qa("yes", "When does water boil?", context, "100 degrees"),
        qa("no", "When does water freeze?", context, impossible=True)]}))
    dm = prepared(tmp_path, train_file=path, validation_file=path, version_2_with_negative=True)
    val = {row["example_id"]: row for row in dm.splits["validation"]}
    assert (val["no"]["start_positions"], val["no"]["end_positions"], val["no"]["answers"]) == (0, 0, [])
    assert val["yes"]["start_positions"] > 0
    with pytest.raises(DataError, match=r"v2.json, data\[0\].paragraphs\[0\].qas\[1\] \(id 'no'\): the question has "
                                        r"no answer; SQuAD v1.1 .*data.version_2_with_negative: true"):
        prepared(tmp_path, train_file=path)


def misplaced(tmp_path, n_bad: int) -> str:
    """40 questions whose answer is 'gold'; the first `n_bad` claim an answer_start two characters off."""
    context = "Silver and gold are metals; gold is yellow."
    qas = [qa(f"q{i}", f"Which metal {i}?", context, "gold") for i in range(40)]
    for q in qas[:n_bad]:
        q["answers"][0]["answer_start"] += 2
    return write_json(tmp_path / f"bad{n_bad}.json", squad({"context": context, "qas": qas}))


def test_a_few_misplaced_answers_are_moved_with_a_warning(tmp_path):
    with pytest.warns(UserWarning, match=r"1 of 40 answers \(2.50%\) are not at their answer_start; the first is "
                                         r"question id 'q0' \(.*bad1.json, data\[0\].paragraphs\[0\].qas\[0\]\)"):
        dm = prepared(tmp_path, train_file=misplaced(tmp_path, 1), validation_file=misplaced(tmp_path, 1),
                      max_bad_answer_fraction=0.05)
    assert len(set(dm.splits["train"]["start_positions"])) == 1  # moved back to the nearest 'gold'


def test_many_misplaced_answers_name_the_file_id_and_count(tmp_path):
    path = misplaced(tmp_path, 3)
    with pytest.raises(DataError, match=r"bad3.json: 3 of 40 answers \(7.50%\) .* question id 'q0' .*context\[13:17\] "
                                        r"is 'ld a', not the answer 'gold'. That is more than "
                                        r"data.max_bad_answer_fraction=0.05"):
        prepared(tmp_path, train_file=path, max_bad_answer_fraction=0.05)


@pytest.mark.parametrize("broken, message", [
    ({"version": "1.1"}, r"bad.json has no 'data' list at the top; expected SQuAD JSON"),
    ({"data": [{"title": "t"}]}, r"bad.json, data\[0\]: no 'paragraphs' \(list\)"),
    (squad({"context": "Text.", "qas": [{"question": "Why?", "answers": []}]}),
     r"data\[0\].paragraphs\[0\].qas\[0\]: no 'id' \(str or int\)"),
    (squad({"context": "  ", "qas": [qa("e", "Why?", "  ")]}), r"qas\[0\] \(id 'e'\): the context is empty"),
    (squad({"context": "Some text.", "qas": [qa("e", " ", "Some text.", "text")]}), r"\(id 'e'\): the question is empty"),
    (squad({"context": "Some text.", "qas": [qa("d", "Why?", "Some text.", "text")] * 2}),
     r"qas\[1\]: question id 'd' is also the id of .*qas\[0\]; ids must be unique"),
])
def test_malformed_squad_files_are_named(tmp_path, broken, message):
    path = write_json(tmp_path / "bad.json", broken)
    with pytest.raises(DataError, match=message):
        prepared(tmp_path, train_file=path)


def test_settings_that_cannot_work_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"data.doc_stride: got 21; expected 0 <= doc_stride < 21"):
        QuestionAnsweringDataModule(model_name_or_path="tiny:bert", train_file="x.json", max_length=32,
                                    max_question_length=8, doc_stride=21)
    with pytest.raises(ConfigError, match=r"give either data.dataset_name"):
        QuestionAnsweringDataModule(model_name_or_path="tiny:bert")


def test_long_questions_are_cut_with_a_warning(tmp_path):
    context = "Bees make honey."
    question = "What " + "very " * 20 + "sweet thing do bees make?"
    path = write_json(tmp_path / "q.json", squad({"context": context, "qas": [qa("q", question, context, "honey")]}))
    with pytest.warns(UserWarning, match=r"1 of 1 train questions were cut to data.max_question_length=8 tokens"):
        dm = prepared(tmp_path, train_file=path, validation_file=path)
    [row] = dm.splits["validation"]
    assert row["token_type_ids"].count(0) == 8 + 2 and row["start_positions"] > 0  # [CLS] question [SEP]
