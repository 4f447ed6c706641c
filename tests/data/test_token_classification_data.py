"""Reading CoNLL-style files, tag schemes, and the token classification data module's labels and errors."""

import json

import pytest
from helpers import write_conll

from lit_finetune.data import TokenClassificationDataModule, readers
from lit_finetune.data.tag_schemes import first_invalid
from lit_finetune.errors import ConfigError, DataError

SENTENCES = [(["John", "lives", "in", "New", "York"], ["B-PER", "O", "O", "B-LOC", "I-LOC"]),
             (["Acme", "hired", "Mary"], ["B-ORG", "O", "B-PER"])]


def data_module(tmp_path, train, validation=None, **kwargs):
    return TokenClassificationDataModule(model_name_or_path="tiny:bert", train_file=str(train),
                                         validation_file=str(validation or train), **kwargs)


def test_conll_reader_skips_docstart_and_keeps_line_numbers(tmp_path):
    ds = readers.read_conll(write_conll(tmp_path / "train.txt", SENTENCES), "data.train_file")
    assert ds["tokens"] == [SENTENCES[0][0], SENTENCES[1][0]]
    assert ds["tags"] == [SENTENCES[0][1], SENTENCES[1][1]]
    assert ds["line"] == [3, 9]


def test_conll_line_with_the_wrong_number_of_columns_names_file_and_line(tmp_path):
    path = write_conll(tmp_path / "train.txt", SENTENCES)
    lines = path.read_text().splitlines()
    lines[5] = "in O"  # 2 columns instead of 4
    path.write_text("\n".join(lines))
    with pytest.raises(DataError, match=r"train.txt, line 6: 2 columns; expected 4 like line 3"):
        readers.read_conll(path, "data.train_file")
    with pytest.raises(ConfigError, match="data.conll_tag_column: column 7 does not exist"):
        readers.read_conll(write_conll(tmp_path / "ok.txt", SENTENCES), "data.train_file", tag_column=7)


@pytest.mark.parametrize("scheme, tags, index", [
    ("IOB2", ["O", "I-PER"], 1), ("IOB2", ["B-PER", "I-LOC"], 1), ("IOB2", ["B-PER", "I-PER", "O"], None),
    ("IOB1", ["I-PER", "I-PER"], None), ("IOB1", ["O", "B-PER"], 1), ("IOB1", ["I-PER", "B-PER"], None),
    ("BIOES", ["B-PER", "E-PER", "S-LOC"], None), ("BIOES", ["B-PER", "O"], 1), ("BIOES", ["O", "B-PER"], 1),
    ("BIOES", ["I-PER"], 0)])
def test_tag_scheme_transitions(scheme, tags, index):
    assert first_invalid(tags, scheme) == index


def test_first_and_all_subword_labels(tmp_path):
    train = write_conll(tmp_path / "train.txt", [(["Johnathan", "unbelievably", "x"], ["B-PER", "O", "O"])])
    rows = {}
    for mode in ("first", "all"):
        dm = data_module(tmp_path, train, label_subwords=mode, cache_dir=str(tmp_path / mode))
        dm.prepare_data()
        dm.setup("fit")
        batch = next(iter(dm.train_dataloader()))
        rows[mode] = batch
    first, every = rows["first"], rows["all"]
    starts = first["word_starts"][0]
    assert int(starts.sum()) == 3  # one start per word, however many sub-tokens
    words = (first["labels"][0] != -100)
    assert words.tolist() == starts.tolist()  # first: only word starts carry a label
    assert int((every["labels"][0] != -100).sum()) > 3  # all: continuation sub-tokens too
    assert dm.id2label == {0: "O", 1: "B-PER"}
    assert first["tokens"] == [["Johnathan", "unbelievably", "x"]]


def test_tag_unseen_in_training_names_file_line_and_tag(tmp_path):
    train = write_conll(tmp_path / "train.txt", SENTENCES)
    dev = write_conll(tmp_path / "dev.txt", [(["Paris", "is", "big"], ["B-LOC", "O", "B-MISC"])])
    with pytest.raises(DataError, match=r"dev.txt, line 3 \(token 3, 'big'\): tag 'B-MISC' never occurs in the "
                                        "training data"):
        data_module(tmp_path, train, dev).prepare_data()


def test_sequence_the_scheme_forbids_suggests_the_scheme(tmp_path):
    train = write_conll(tmp_path / "train.txt", SENTENCES + [(["the", "Smiths"], ["O", "I-PER"])])
    with pytest.raises(DataError, match=r"line 13: tag 'I-PER' after 'O' \(token 2\) is not valid IOB2; 1 of 3 "
                                        r"train sentences .* data.tag_scheme"):
        data_module(tmp_path, train).prepare_data()
    iob1 = write_conll(tmp_path / "iob1.txt", [(["John", "Smith"], ["I-PER", "I-PER"]), (["the", "Smiths"], ["O", "I-PER"])])
    data_module(tmp_path, iob1, tag_scheme="IOB1").prepare_data()  # I- opens an entity in IOB1


def test_words_past_max_length_are_counted(tmp_path):
    train = write_conll(tmp_path / "train.txt", [(["word"] * 20, ["O"] * 19 + ["B-PER"])])
    dm = data_module(tmp_path, train, max_length=8)
    with pytest.warns(UserWarning, match="14 words of the train split fall past data.max_length=8"):
        dm.prepare_data()


def test_jsonl_with_integer_tags_named_by_label_names(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"tokens": w, "ner_tags": [["O", "B-PER", "I-PER"].index(t) if t in
                                        ("O", "B-PER", "I-PER") else 0 for t in tags]}) + "\n"
                            for w, tags in SENTENCES))
    dm = data_module(tmp_path, path, label_names=["O", "B-PER", "I-PER"])
    dm.prepare_data()
    dm.setup("fit")
    assert dm.id2label == {0: "O", 1: "B-PER", 2: "I-PER"}
    with pytest.raises(ConfigError, match="name them with data.label_names"):
        data_module(tmp_path, path, cache_dir=str(tmp_path / "other")).prepare_data()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"tokens": ["a", "b"], "ner_tags": ["O"]}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl, row 1 \(line 1\): 2 tokens but 1 tags"):
        data_module(tmp_path, bad).prepare_data()
