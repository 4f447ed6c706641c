"""InstructionDataModule: which tokens are trained on (plain format and chat template), truncation, and bad data."""

import json

import pytest
from helpers import write_rows
from transformers import AutoTokenizer

from lit_finetune import backbones
from lit_finetune.data.instructions import IGNORE, InstructionDataModule
from lit_finetune.errors import ConfigError, DataError

PAIRS = [{"id": "a", "prompt": "What is the capital of France?", "response": "Paris is."},
         {"id": "b", "prompt": "Say hi", "response": "hello there friend"}]
# A tiny chat template over the MiniLM vocabulary: each turn ends with [SEP], a reply starts after "assistant :".
TEMPLATE = ("{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} [SEP] {% endfor %}"
            "{% if add_generation_prompt %}assistant :{% endif %}")


def data_module(tmp_path, rows, **kwargs) -> InstructionDataModule:
    files = {f"{split}_file": str(write_rows(tmp_path / f"{split}.jsonl", rows)) for split in ("train", "validation")}
    dm = InstructionDataModule("tiny:gpt2", **{**files, "id_column": "id", "batch_size": 4, **kwargs})
    dm.prepare_data()
    dm.setup("fit")
    return dm


def trained_text(dm, batch) -> list[tuple[str, str]]:
    """(whole example, the part in the loss) of each row, decoded."""
    return [(dm.tokenizer.decode(ids[mask == 1]), dm.tokenizer.decode(labels[labels != IGNORE]))
            for ids, mask, labels in zip(batch["input_ids"], batch["attention_mask"], batch["labels"])]


@pytest.fixture(scope="module")
def chat_tokenizer(tmp_path_factory) -> str:
    """The packaged MiniLM tokenizer with TEMPLATE as its chat template, saved as a folder."""
    tokenizer = AutoTokenizer.from_pretrained(backbones.packaged_minilm_path())
    tokenizer.chat_template = TEMPLATE
    folder = tmp_path_factory.mktemp("chat-tokenizer")
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_plain_format_trains_on_response_and_end_token_only(tmp_path):
    dm = data_module(tmp_path, PAIRS, separator=" =>")
    assert not dm.chat
    batch = next(iter(dm.val_dataloader()))
    assert batch["example_id"] == ["a", "b"]
    assert trained_text(dm, batch) == [("[CLS] what is the capital of france? = > paris is. [SEP]", "paris is. [SEP]"),
                                       ("[CLS] say hi = > hello there friend [SEP]", "hello there friend [SEP]")]
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE).all()  # padding: right side, out of the loss
    assert batch["attention_mask"][1].tolist() == [1] * 9 + [0] * 5

    prompts = dm.prompt_batch("validation", 2)  # for generation: the prompt alone, left-padded
    assert [dm.tokenizer.decode(ids[m == 1]) for ids, m in zip(prompts["input_ids"], prompts["attention_mask"])] \
        == ["[CLS] what is the capital of france? = >", "[CLS] say hi = >"]
    assert prompts["attention_mask"][1].tolist() == [0] * 5 + [1] * 5 and prompts["prompt"][1] == "Say hi"


def test_chat_template_trains_on_every_assistant_turn(tmp_path, chat_tokenizer):
    rows = [{"id": "c", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                                     {"role": "user", "content": "bye"}, {"role": "assistant", "content": "see you"},
                                     {"role": "user", "content": "ignored tail"}]}]
    dm = data_module(tmp_path, rows, messages_column="messages", tokenizer_name_or_path=chat_tokenizer,
                     system_prompt="be kind")
    assert dm.chat
    [(whole, trained)] = trained_text(dm, next(iter(dm.train_dataloader())))
    assert whole == ("system : be kind [SEP] user : hi [SEP] assistant : hello [SEP] user : bye [SEP] "
                     "assistant : see you [SEP]")  # the tail after the last reply is left out
    assert trained == "hello [SEP] see you [SEP]"
    prompt = dm.prompt_batch("train", 1)
    assert dm.tokenizer.decode(prompt["input_ids"][0]).endswith("user : bye [SEP] assistant :")
    assert prompt["prompt"] == ["bye"]


def test_prompt_response_pairs_use_the_chat_template(tmp_path, chat_tokenizer):
    dm = data_module(tmp_path, PAIRS, tokenizer_name_or_path=chat_tokenizer)
    [_, (whole, trained)] = trained_text(dm, next(iter(dm.val_dataloader())))
    assert (whole, trained) == ("user : say hi [SEP] assistant : hello there friend [SEP]", "hello there friend [SEP]")
    plain = data_module(tmp_path / "plain", PAIRS, tokenizer_name_or_path=chat_tokenizer, prompt_format="plain")
    assert not plain.chat


def test_truncation_is_counted_and_examples_without_response_tokens_dropped(tmp_path):
    rows = [{"id": "short", "prompt": "hi", "response": "hello"},
            {"id": "long-response", "prompt": "hi", "response": "word " * 20},
            {"id": "long-prompt", "prompt": "word " * 20, "response": "lost"}]
    with pytest.warns(UserWarning, match=r"2 of 3 train examples \(66.7%\) were longer than data.max_length=8 tokens: "
                                         r"cut at the end; 1 of them kept no response token and were dropped"):
        dm = data_module(tmp_path, rows, max_length=8)
    assert dm.splits["train"]["example_id"] == ["short", "long-response"]
    assert dm.meta["counts"]["train"] == {"examples": 3, "truncated": 2, "dropped": 1}
    assert max(len(ids) for ids in dm.splits["train"]["input_ids"]) == 8

    with pytest.raises(DataError, match=r"all 1 train examples lose their whole response to data.max_length=8"):
        data_module(tmp_path / "none", rows[2:], max_length=8)


def test_rows_without_a_target_are_refused(tmp_path, chat_tokenizer):
    rows = [*PAIRS, {"id": "c", "prompt": "ok?", "response": "  "}]
    with pytest.raises(DataError, match=r"train.jsonl, row 3 \(line 3\): column 'response' is empty or null"):
        data_module(tmp_path, rows)
    with pytest.raises(DataError, match=r"train.jsonl: no column 'answer' \(set by data.response_column\)"):
        data_module(tmp_path / "column", PAIRS, response_column="answer")
    chats = [{"messages": [{"role": "user", "content": "hi"}]}]
    with pytest.raises(DataError, match=r"train.jsonl, row 1 \(line 1\): column 'messages' has no 'assistant' turn"):
        data_module(tmp_path / "chat", chats, messages_column="messages", tokenizer_name_or_path=chat_tokenizer,
                    id_column=None)
    with pytest.raises(DataError, match=r"row 1 \(line 1\): column 'messages' is 'hi'; expected a list of"):
        data_module(tmp_path / "str", [{"messages": "hi"}], messages_column="messages",
                    tokenizer_name_or_path=chat_tokenizer, id_column=None)


def test_settings_the_tokenizer_cannot_meet_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"data.messages_column: conversations need a chat template"):
        InstructionDataModule("tiny:gpt2", train_file=str(tmp_path / "x.jsonl"), messages_column="messages")
    with pytest.raises(ConfigError, match=r"data.prompt_format: chat, but the tokenizer of 'tiny:gpt2' has no chat"):
        InstructionDataModule("tiny:gpt2", train_file=str(tmp_path / "x.jsonl"), prompt_format="chat")


def test_predict_prompts_keep_their_end_when_too_long(tmp_path):
    path = tmp_path / "predict.jsonl"
    path.write_text(json.dumps({"prompt": "one two three four five six"}) + "\n")
    dm = InstructionDataModule("tiny:gpt2", predict_file=str(path), max_length=5)
    dm.prepare_data()
    dm.setup("predict")
    batch = next(iter(dm.predict_dataloader()))
    assert dm.tokenizer.decode(batch["input_ids"][0]) == "two three four five six"
    assert batch["example_id"] == ["0"] and dm.meta["counts"]["predict"]["truncated"] == 1
