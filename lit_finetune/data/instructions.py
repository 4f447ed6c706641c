"""Prompt/response pairs, or chat conversations, for supervised fine-tuning (SFT) of causal language models.

An example is the prompt as the model will see it at inference, followed by the response and its end token: with the
tokenizer's chat template when it has one (the response is the assistant turn), else ``prompt + separator + response
+ eos``. Only response tokens are trained on, so the model learns to answer, not to write prompts.

Batch contract (what the task module receives): for fit / validate / test, ``input_ids``, ``attention_mask`` and
``labels`` (the input ids, -100 on prompt and padding tokens), right-padded; for predict (and generation samples),
``input_ids`` and ``attention_mask`` of the prompt alone, left-padded so that generated tokens follow it directly, and
``prompt`` (the prompt text, a list of strings). Both carry ``example_id`` (the id column or the row number).
"""

from __future__ import annotations

from typing import Literal

import datasets
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader
from transformers import DataCollatorForSeq2Seq

from lit_finetune.bounds import OpenFraction, PositiveInt
from lit_finetune.data import packing, readers, streaming
from lit_finetune.data.base import SplitsDataModule
from lit_finetune.data.packing import IGNORE, Packing
from lit_finetune.errors import ConfigError, DataError

PromptFormat = Literal["auto", "chat", "plain"]
TooLong = Literal["truncate", "refuse"]


class InstructionCollator:
    """Training batches: right-padded, labels padded with -100 (``DataCollatorForSeq2Seq``). Prompt batches: the
    prompt part of each example, left-padded for ``generate``."""

    def __init__(self, tokenizer, prompts_only: bool = False, pad_to_multiple_of: int | None = None):
        self.tokenizer, self.prompts_only = tokenizer, prompts_only
        self.pad = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE, pad_to_multiple_of=pad_to_multiple_of)

    def __call__(self, rows: list[dict]) -> dict:
        if self.prompts_only:
            prompts = [{"input_ids": r["input_ids"][:r["prompt_length"]]} for r in rows]
            batch = self.tokenizer.pad(prompts, padding_side="left", return_tensors="pt")
            batch["prompt"] = [r["prompt"] for r in rows]
        else:
            batch = self.pad([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows])
        batch["example_id"] = [r["example_id"] for r in rows]
        return batch


class InstructionDataModule(SplitsDataModule):
    """Instruction / chat data for causal-LM SFT, from hub datasets or local jsonl, json, csv, tsv, parquet.

    Features: ``prompt`` / ``response`` columns (optional system prompt) or a ``messages`` column of chat turns
    (every assistant turn is trained on); the tokenizer's chat template, or a plain format for tokenizers without
    one; truncation to ``max_length`` counted, examples left without response tokens dropped with a warning; a seeded
    validation hold-out when there is no validation data; tokenized once into a cache keyed by data and settings.
    Raises: DataError for a missing column, an empty prompt or response, a malformed conversation, or a split whose
    every response is truncated away; ConfigError for settings the tokenizer cannot meet.
    """

    cache_family = "instructions"

    def __init__(
        self,
        model_name_or_path: str = "smollm2",
        prompt_column: str = "prompt",
        response_column: str = "response",
        messages_column: str | None = None,
        id_column: str | None = None,
        system_prompt: str | None = None,
        prompt_format: PromptFormat = "auto",
        separator: str = "\n",
        max_length: PositiveInt = 512,
        validation_fraction: OpenFraction = 0.05,
        seed: int = 42,
        pad_to_multiple_of: PositiveInt | None = None,
        packing: Packing = "none",
        group_by_length: bool = False,
        too_long: TooLong = "truncate",
        streaming: bool = False,
        **kwargs,
    ):
        """
        Args:
            model_name_or_path: Backbone whose tokenizer is used; linked from model.model_name_or_path.
            prompt_column: Column holding the prompt (the user's instruction).
            response_column: Column holding the response to learn (the assistant's answer).
            messages_column: Column of chat conversations (lists of ``{role, content}``) to use instead of prompt and
                response columns; needs a chat template.
            id_column: Column with example ids written next to predictions; row numbers when unset.
            system_prompt: System message put before each conversation (chat), or text before each prompt (plain).
            prompt_format: ``chat`` (the tokenizer's chat template), ``plain`` (prompt + separator + response + end
                token) or ``auto`` (chat when the tokenizer has a template).
            separator: Text between prompt and response in the plain format.
            max_length: Longest example in tokens, prompt included; longer ones are cut at the end and counted.
            validation_fraction: Share of train held out (seeded) when there is no validation split.
            seed: Seed for the validation hold-out.
            pad_to_multiple_of: Pad training batch length to a multiple of this (8 helps tensor cores on GPU).
            packing: ``padding_free``: training and evaluation batches are rows of several whole examples, up to
                max_length tokens each (first-fit-decreasing, seeded), with positions restarting at each example so
                attention never crosses them; batch_size then counts rows. ``none``: one padded example per row.
            group_by_length: Sample training batches of examples of similar length (less padding, faster epochs).
            too_long: What happens to an example longer than max_length: ``truncate`` (cut at the end, counted in
                the log) or ``refuse`` (a DataError naming its row, before training).
            streaming: Read the training examples as a stream, tokenized on the fly, each process its own part (for
                data larger than memory); needs trainer.max_steps, validation data (a file or the hub's split) and
                trainer.val_check_interval in steps. See lit_finetune.data.streaming.
            **kwargs: Data source, tokenizer, batch sizes, workers and cache (see SplitsDataModule).
        """
        super().__init__(model_name_or_path=model_name_or_path, **kwargs)
        if packing == "padding_free" and (streaming or group_by_length):
            other = "streaming" if streaming else "group_by_length"
            why = "a stream never holds" if streaming else "leave no padding for length grouping to save"
            raise ConfigError(f"data.packing: padding_free packs the cached examples into rows, which {why}; set "
                              f"data.packing: none, or data.{other}: false")
        has_template = bool(self.tokenizer.chat_template)
        self.chat = prompt_format == "chat" or (prompt_format == "auto" and has_template)
        if self.chat and not has_template:
            raise ConfigError(f"data.prompt_format: chat, but the tokenizer of {model_name_or_path!r} has no chat "
                              "template; use prompt_format: plain (or auto)")
        if messages_column and not self.chat:
            raise ConfigError(f"data.messages_column: conversations need a chat template, and the tokenizer of "
                              f"{model_name_or_path!r} has none (or data.prompt_format is plain); use prompt and "
                              "response columns instead")
        # The plain format's start and end tokens: BERT-style vocabularies (the tiny presets) have [CLS] / [SEP].
        tok = self.tokenizer
        start = tok.bos_token_id if tok.bos_token_id is not None else tok.cls_token_id
        self.start_ids = [] if start is None else [start]
        self.end_id = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
        if self.end_id is None:
            raise ConfigError(f"model.model_name_or_path: the tokenizer of {model_name_or_path!r} has no eos or sep "
                              "token to end responses with, so the model could never learn to stop")
        if tok.pad_token_id is None:  # GPT-2-style vocabularies: padding is masked out of attention and loss anyway
            tok.pad_token = tok.eos_token

    def cache_key(self) -> dict:
        # The chat template is the tokenizer's, but not in its backend's fingerprint.
        return {**super().cache_key(), "template": self.tokenizer.chat_template if self.chat else None}

    # ----------------------------------------------------------------------------------------------------------- #
    # Reading and checking the raw data (rank 0 only, in prepare_data)

    def check_conversations(self, ds: datasets.Dataset, split: str, source: str) -> None:
        """Each conversation is a list of {role, content} turns with text, and one to learn from (an assistant
        turn) unless it is only to be answered."""
        column = self.hparams.messages_column
        for i, turns in enumerate(readers.column(ds, column).to_pylist()):
            where = f"{readers.row_location(source, i)}: column {column!r}"
            if not isinstance(turns, list) or not turns or not all(
                    isinstance(t, dict) and isinstance(t.get("role"), str) and isinstance(t.get("content"), str)
                    for t in turns):
                raise DataError(f"{where} is {str(turns)[:80]!r}; expected a list of {{'role', 'content'}} turns")
            empty = next((t for t in turns if not t["content"].strip()), None)
            if empty is not None:
                raise DataError(f"{where} has an empty {empty['role']!r} turn; expected text in every turn")
            if split != "predict" and not any(t["role"] == "assistant" for t in turns):
                raise DataError(f"{where} has no 'assistant' turn, so nothing to learn from; expected at least one")

    def check_split(self, ds: datasets.Dataset, split: str, source: str) -> datasets.Dataset:
        """Columns and text checked; the split reduced to ``example_id`` and the text columns it needs."""
        h = self.hparams
        key_of = {h.prompt_column: "data.prompt_column", h.response_column: "data.response_column",
                  h.messages_column: "data.messages_column", h.id_column: "data.id_column"}
        if h.messages_column:
            text = [h.messages_column]
        else:
            text = [h.prompt_column] + ([h.response_column] if split != "predict" else [])
        readers.require_columns(ds, text + ([h.id_column] if h.id_column else []), source, key_of)
        if h.messages_column:
            self.check_conversations(ds, split, source)
        else:
            for name in text:  # an empty response would be an example with nothing to learn
                readers.require_text(ds, name, source)
        ids = readers.column(ds, h.id_column).to_pylist() if h.id_column else range(len(ds))
        return ds.select_columns(text).add_column("example_id", [str(i) for i in ids])

    # ----------------------------------------------------------------------------------------------------------- #
    # Tokenizing: prompt tokens get label -100, response tokens their own id

    def template(self, turns: list[dict], generation_prompt: bool = False) -> list[int]:
        return self.tokenizer.apply_chat_template(turns, add_generation_prompt=generation_prompt, return_dict=False)

    def encode_chat(self, turns: list[dict]) -> tuple[list[int], list[int], int]:
        """(ids, labels, prompt length) of a conversation: each assistant turn's tokens (its end token included) are
        labels; the prompt is everything before the last one, as the template renders it for generation. A
        conversation that does not end with an assistant turn is a prompt to answer."""
        if turns[-1]["role"] != "assistant":
            ids = self.template(turns, generation_prompt=True)
            return ids, [IGNORE] * len(ids), len(ids)
        ids = self.template(turns)
        labels, prompt_length = [IGNORE] * len(ids), len(ids)
        for i, turn in enumerate(turns):
            if turn["role"] != "assistant":
                continue
            before, through = self.template(turns[:i], generation_prompt=True), self.template(turns[:i + 1])
            if ids[:len(before)] != before or ids[:len(through)] != through:
                raise ConfigError(f"data.prompt_format: the chat template of {self.hparams.model_name_or_path!r} "
                                  "renders earlier turns differently once later ones follow, so prompt and response "
                                  "tokens cannot be told apart; use data.prompt_format: plain")
            labels[len(before):len(through)] = ids[len(before):len(through)]
            prompt_length = len(before)
        return ids, labels, prompt_length

    def encode_plain(self, prompt: str, response: str | None) -> tuple[list[int], list[int], int]:
        """(ids, labels, prompt length) of ``start + [system + separator] + prompt + separator + response + end``;
        prompt and response are tokenized apart, so the prompt's tokens are the same as at inference."""
        h = self.hparams
        text = f"{h.system_prompt}{h.separator}{prompt}{h.separator}" if h.system_prompt else prompt + h.separator
        prompt_ids = self.start_ids + self.tokenizer(text, add_special_tokens=False)["input_ids"]
        response_ids = [] if response is None else \
            self.tokenizer(response, add_special_tokens=False)["input_ids"] + [self.end_id]
        return prompt_ids + response_ids, [IGNORE] * len(prompt_ids) + response_ids, len(prompt_ids)

    def conversation(self, row: dict, split: str) -> tuple[list[dict], str]:
        """A row as chat turns (system prompt first), and the prompt text written next to predictions."""
        h = self.hparams
        system = [{"role": "system", "content": h.system_prompt}] if h.system_prompt else []
        if h.messages_column:
            turns = row[h.messages_column]
            if system and turns[0]["role"] != "system":
                turns = system + turns
            if split == "predict":  # answer the conversation; a reply already at its end is left out
                turns = turns[:-1] if turns[-1]["role"] == "assistant" and len(turns) > 1 else turns
            else:  # train up to the last reply: nothing after it is learned
                turns = turns[:max(i for i, t in enumerate(turns) if t["role"] == "assistant") + 1]
            users = [t["content"] for t in turns if t["role"] == "user"]
            return turns, users[-1] if users else turns[0]["content"]
        turns = system + [{"role": "user", "content": str(row[h.prompt_column])}]
        if split != "predict":
            turns.append({"role": "assistant", "content": str(row[h.response_column])})
        return turns, str(row[h.prompt_column])

    def encode(self, batch: dict, split: str) -> dict:
        h = self.hparams
        out = {"input_ids": [], "labels": [], "length": [], "prompt_length": [], "prompt": [], "truncated": []}
        rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        for row in rows:
            if self.chat:
                turns, prompt = self.conversation(row, split)
                ids, labels, prompt_length = self.encode_chat(turns)
            else:
                prompt = str(row[h.prompt_column])
                response = None if split == "predict" else str(row[h.response_column])
                ids, labels, prompt_length = self.encode_plain(prompt, response)
            if split == "predict":  # keep the end of a long prompt: that is where the answer starts
                cut = max(0, prompt_length - h.max_length)
                ids, labels, prompt_length = ids[cut:prompt_length], labels[cut:prompt_length], prompt_length - cut
                out["truncated"].append(cut > 0)
            else:
                out["truncated"].append(len(ids) > h.max_length)
                ids, labels = ids[:h.max_length], labels[:h.max_length]
            out["input_ids"].append(ids)
            out["length"].append(len(ids))
            out["labels"].append(labels)
            out["prompt_length"].append(min(prompt_length, len(ids)))
            out["prompt"].append(prompt)
        return out

    def tokenize_split(self, ds: datasets.Dataset, split: str, source: str, name: str) -> tuple[datasets.Dataset, dict]:
        """Tokenized split and its counts; examples whose responses were cut away entirely are dropped."""
        h = self.hparams
        ds = ds.map(self.encode, batched=True, fn_kwargs={"split": split}, desc=f"Tokenizing {split}",
                    remove_columns=[c for c in ds.column_names if c != "example_id"], new_fingerprint=name,
                    num_proc=h.num_proc)
        truncated = readers.column(ds, "truncated").to_pylist()
        counts = {"examples": len(ds), "truncated": int(sum(truncated))}
        if counts["truncated"] and h.too_long == "refuse" and split != "predict":
            row = truncated.index(True)
            raise DataError(f"{readers.row_location(source, row)}: the example is longer than data.max_length="
                            f"{h.max_length} tokens ({counts['truncated']} of {len(ds)} {split} examples are); raise "
                            "data.max_length, or set data.too_long: truncate to cut them at the end")
        if split != "predict":
            keep = [i for i, labels in enumerate(readers.column(ds, "labels").to_pylist())
                    if any(label != IGNORE for label in labels)]
            counts["dropped"] = len(ds) - len(keep)
            if not keep:
                raise DataError(f"{source}: all {len(ds)} {split} examples lose their whole response to "
                                f"data.max_length={h.max_length} (their prompts fill it); raise data.max_length")
            if counts["dropped"]:
                ds = ds.select(keep)
        return ds.remove_columns("truncated"), counts

    def build_splits(self, fingerprint: str) -> tuple[dict, dict]:
        """Read, check and tokenize every split: the splits to cache and their metadata (all but a streamed train
        split)."""
        raw, sources = self.read_raw(skip=("train",) if self.hparams.streaming else ())
        if self.hparams.streaming and "validation" not in raw:
            raise ConfigError("data.streaming: validation examples cannot be held out of a stream; give "
                              "data.validation_file (or a hub dataset with a validation split)")
        checked = {split: self.check_split(ds, split, sources[split]) for split, ds in raw.items()}
        if "train" in checked and "validation" not in checked:
            checked["train"], checked["validation"] = self.hold_out(checked["train"])
            sources["validation"] = f"{sources['train']} (held out)"
        tokenized, counts = {}, {}
        for split, ds in checked.items():
            tokenized[split], counts[split] = self.tokenize_split(ds, split, sources[split], f"{fingerprint}-{split}")
            n, cut, dropped = counts[split]["examples"], counts[split]["truncated"], counts[split].get("dropped", 0)
            if cut:
                how = "prompts kept their last tokens" if split == "predict" else \
                    f"cut at the end; {dropped} of them kept no response token and were dropped"
                rank_zero_warn(f"{cut} of {n} {split} examples ({100 * cut / n:.1f}%) were longer than "
                               f"data.max_length={self.hparams.max_length} tokens: {how}.")
        return tokenized, dict(counts=counts, chat=self.chat)

    def summary(self, meta: dict) -> str:
        return f"Tokenized {meta['sizes']} examples ({'chat template' if meta['chat'] else 'plain format'})"

    def setup(self, stage: str | None = None) -> None:
        self.meta = streaming.load_splits(self, stage)

    def train_stream(self, passes: int | None = None) -> datasets.IterableDataset:
        """This process's tokenized training examples, streamed and repeated `passes` times (without end by
        default); each batch of rows is checked as the table would be, its first rows before training starts."""
        h = self.hparams
        source, name, first = streaming.training_source(self.files.get("train"), h.dataset_name, h.dataset_config)
        self.check_split(datasets.Dataset.from_list([first]), "train", f"{name} (its first row)")
        if h.max_train_examples:
            source = source.take(h.max_train_examples)

        def examples(part: datasets.IterableDataset) -> datasets.IterableDataset:
            def checked(batch: dict) -> dict:
                rows = self.check_split(datasets.Dataset.from_dict(batch), "train", f"{name} (a streamed batch)")
                return self.encode(rows.to_dict(), "train") | {"example_id": rows["example_id"]}

            tokenized = part.map(checked, batched=True, remove_columns=list(first))
            return tokenized.filter(lambda labels: any(label != IGNORE for label in labels), input_columns="labels")

        return streaming.process_part(source, self.trainer, examples).repeat(passes)

    # ----------------------------------------------------------------------------------------------------------- #

    def collator(self, prompts_only: bool = False) -> InstructionCollator:
        return InstructionCollator(self.tokenizer, prompts_only, self.hparams.pad_to_multiple_of)

    @property
    def packing_key(self) -> str | None:
        """The setting that packs several examples into a row (its model must keep them apart), if on."""
        return "data.packing" if self.hparams.packing == "padding_free" else None

    def loader(self, split: str, train: bool = False) -> DataLoader:
        """Padded batches of examples, or with packing, batches of packed rows."""
        h = self.hparams
        if h.packing == "none":
            return super().loader(split, train)
        rows = packing.pack_split(self.splits[split], h.max_length, h.seed)
        rank_zero_info(f"Packed {len(rows.dataset)} {split} examples into {len(rows)} rows of up to {h.max_length} "
                       f"tokens ({100 * rows.fill:.1f}% full).")
        return self.dataloader(rows, train, packing.PackedCollator(self.tokenizer.pad_token_id, h.pad_to_multiple_of))

    def train_dataloader(self) -> DataLoader:
        if not self.hparams.streaming:
            return super().train_dataloader()
        return streaming.loader(self, self.splits["train"], self.collator())

    def prompt_batch(self, split: str, count: int) -> dict:
        """The prompts of a split's first `count` examples as one batch, for generation samples during training."""
        ds = self.splits[split]
        return self.collator(prompts_only=True)(list(ds.select(range(min(count, len(ds))))))

    def predict_dataloader(self) -> DataLoader:
        """Prompts only, left-padded, to be answered."""
        return self.dataloader(self.splits[self.predict_split()], False, self.collator(prompts_only=True))
