"""The corpus data module: documents from .txt / tabular files, packed into full blocks with word starts."""

import json
import re

import pytest

from lit_finetune.data.corpus import CorpusDataModule
from lit_finetune.data.readers import split_documents
from lit_finetune.errors import ConfigError, DataError


def corpus(dm: CorpusDataModule):
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_txt_documents_by_line_paragraph_or_file():
    text = "first line\nsecond line\n\n  \nthird paragraph\nstill third\n"
    assert list(split_documents(text.splitlines(keepends=True), "line")) == ["first line", "second line", "third paragraph", "still third"]
    assert list(split_documents(text.splitlines(keepends=True), "blank_line")) == ["first line\nsecond line", "third paragraph\nstill third"]
    assert list(split_documents(text.splitlines(keepends=True), "file")) == [text.strip()]


def test_blocks_are_full_wrapped_and_mark_word_starts(tmp_path):
    docs = [f"document number {i} talks about unbelievably interesting things ." for i in range(40)]
    (tmp_path / "train.txt").write_text("\n".join(docs))
    dm = corpus(CorpusDataModule("tiny:bert", train_file=str(tmp_path / "train.txt"), max_length=24, batch_size=4))
    batch = next(iter(dm.train_dataloader()))
    tok = dm.tokenizer
    assert batch["input_ids"].shape == (4, 24) and batch["attention_mask"].all()
    assert (batch["input_ids"][:, 0] == tok.cls_token_id).all() and (batch["input_ids"][:, -1] == tok.sep_token_id).all()
    ids = batch["input_ids"].flatten().tolist()
    special = batch["special_tokens_mask"].flatten().tolist()
    assert all(s == (i in tok.all_special_ids) for i, s in zip(ids, special))
    # A word start is a token that does not continue a word (no "##" piece), and never a special token.
    for token, start, is_special in zip(tok.convert_ids_to_tokens(ids), batch["word_starts"].flatten().tolist(), special):
        assert start == (not is_special and not token.startswith("##")), token
    # Documents joined with [SEP] and cut into full blocks: only the tail shorter than one block is left out.
    assert dm.meta["documents"] == {"train": 38, "validation": 2}  # 5% held out, seeded
    total = sum(len(tok(d, add_special_tokens=False)["input_ids"]) + 1 for d in dm.read_raw()["train"]["text"])
    assert len(dm.splits["train"]) == total // dm.block_body == total // 22


def test_tabular_text_column_and_hold_out_are_seeded(tmp_path):
    rows = [{"body": f"row {i} has some words in it ." * 3} for i in range(50)] + [{"body": ""}]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    a = corpus(CorpusDataModule("tiny:bert", train_file=str(tmp_path / "c.jsonl"), text_column="body", max_length=16))
    b = corpus(CorpusDataModule("tiny:bert", train_file=str(tmp_path / "c.jsonl"), text_column="body", max_length=16))
    assert a.meta["documents"] == {"train": 47, "validation": 3}  # the empty row is skipped
    assert a.splits["validation"]["input_ids"] == b.splits["validation"]["input_ids"]


def test_bad_corpus_input_is_named(tmp_path):
    (tmp_path / "c.jsonl").write_text('{"text": "hello"}\n')
    with pytest.raises(DataError, match=r"c.jsonl: no column 'body' \(set by data.text_column\)"):
        corpus(CorpusDataModule("tiny:bert", train_file=str(tmp_path / "c.jsonl"), text_column="body"))
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(DataError, match=r"empty.txt: the train split has no text"):
        corpus(CorpusDataModule("tiny:bert", train_file=str(tmp_path / "empty.txt")))
    with pytest.raises(DataError, match=r"data.train_file: file .*missing.txt does not exist"):
        corpus(CorpusDataModule("tiny:bert", train_file=str(tmp_path / "missing.txt")))
    with pytest.raises(ConfigError, match=r"data.max_length: 4 leaves 2 tokens"):
        CorpusDataModule("tiny:bert", train_file=str(tmp_path / "c.jsonl"), max_length=4)


@pytest.mark.parametrize("kind", ["nsp", "sop"])
def test_sentence_pairs_for_nsp_and_sop(kind, tmp_path):
    # Every sentence carries its document and sentence number as a tag word: d<doc>s<sentence>.
    docs = [" ".join(f"d{d}s{s} says {'something ' * (s % 4 + 1)}." for s in range(12)) for d in range(30)]
    (tmp_path / "train.txt").write_text("\n".join(docs))
    dm = corpus(CorpusDataModule("tiny:bert", train_file=str(tmp_path / "train.txt"), examples=kind,
                                 max_length=48, batch_size=8, validation_fraction=0.1))
    tok = dm.tokenizer
    pairs = dm.splits["train"]
    labels = pairs["pair_label"]
    assert len(pairs) > 50 and 0.3 < sum(labels) / len(labels) < 0.7  # about half are random / swapped
    checked = 0
    for ids, types, label in zip(pairs["input_ids"], pairs["token_type_ids"], labels):
        assert len(ids) <= 48 and ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
        sep = ids.index(tok.sep_token_id)
        assert types == [0] * (sep + 1) + [1] * (len(ids) - sep - 1)
        tags_a = [tuple(map(int, t)) for t in re.findall(r"\bd(\d+)s(\d+)\b", tok.decode(ids[1:sep]))]
        tags_b = [tuple(map(int, t)) for t in re.findall(r"\bd(\d+)s(\d+)\b", tok.decode(ids[sep + 1:-1]))]
        if not (tags_a and tags_b):
            continue  # a segment trimmed below one tag
        checked += 1
        same_document = {d for d, _ in tags_a} == {d for d, _ in tags_b}
        in_order = max(s for _, s in tags_a) < min(s for _, s in tags_b)
        if kind == "nsp":  # B continues A (same document, next sentences) exactly when the label is 0
            assert (same_document and in_order) == (label == 0)
        else:  # always one document; swapped exactly when the label is 1
            assert same_document and in_order == (label == 0)
    assert checked > 0.8 * len(pairs)
    batch = next(iter(dm.train_dataloader()))
    assert {"token_type_ids", "pair_label", "word_starts"} <= set(batch) and batch["pair_label"].shape == (8,)
    assert not (batch["special_tokens_mask"] & batch["attention_mask"].bool() & batch["word_starts"]).any()
