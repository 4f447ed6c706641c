"""Raw-text corpora for pretraining: documents from the hub or local files, tokenized once, then either packed into
blocks or made into sentence pairs.

``examples: blocks`` (masked / causal LM, ELECTRA): documents are joined with the tokenizer's separator and cut into
blocks of ``max_length`` tokens, each wrapped in the tokenizer's special tokens (``[CLS] ... [SEP]``); no padding.
``examples: nsp`` / ``sop`` (BERT / ALBERT): ``[CLS] A [SEP] B [SEP]`` where A and B are runs of whole sentences of one
document; for NSP, half the B segments come from another document (label 1), for SOP half the pairs are swapped
(label 1). Pairs are drawn once, with ``seed``, and cached.

Batch contract: ``input_ids``, ``attention_mask``, ``special_tokens_mask`` (bool: never masked or replaced),
``word_starts`` (bool: the first token of each word, for whole-word masking); for pairs also ``token_type_ids`` and
``pair_label``.
"""

from __future__ import annotations

import random
import re
from typing import Literal

import datasets
import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader

from lit_finetune.bounds import OpenFraction, PositiveInt
from lit_finetune.data import packing, readers, streaming
from lit_finetune.data.base import TokenizedDataModule
from lit_finetune.data.readers import TxtDocuments
from lit_finetune.errors import ConfigError, DataError

Examples = Literal["blocks", "nsp", "sop"]
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\S)")


def split_sentences(document: str) -> list[str]:
    """Sentences at '.', '!' or '?' followed by a space: enough for the pair objectives' segment boundaries."""
    return [part for part in SENTENCE_END.split(document) if part.strip()]


class BlockCollator:
    """Pads blocks (or sentence pairs) into a batch; full blocks need no padding."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, blocks: list[dict]) -> dict:
        def stack(key: str, pad) -> torch.Tensor:
            return pad_sequence([torch.as_tensor(b[key]) for b in blocks], batch_first=True, padding_value=pad)

        input_ids = stack("input_ids", self.pad_token_id)
        lengths = torch.tensor([len(b["input_ids"]) for b in blocks])
        attention_mask = (torch.arange(input_ids.shape[1])[None, :] < lengths[:, None]).long()
        batch = {"input_ids": input_ids, "attention_mask": attention_mask,
                 "special_tokens_mask": stack("special_tokens_mask", 1).bool() | (attention_mask == 0),
                 "word_starts": stack("word_starts", 0).bool()}
        if "document_starts" in blocks[0]:
            batch["position_ids"] = packing.positions_from_starts(stack("document_starts", 0).bool())
        if "pair_label" in blocks[0]:
            batch["token_type_ids"] = stack("token_type_ids", 0)
            batch["pair_label"] = torch.tensor([int(b["pair_label"]) for b in blocks])
        return batch


class CorpusDataModule(TokenizedDataModule):
    """Text for masked / causal / replaced-token pretraining, packed into fixed-length blocks.

    Features: hub datasets or local .txt (documents by line, paragraph or file), .jsonl / .json / .parquet / .csv with
    a text column; a seeded hold-out of documents when there is no validation data; tokenized once on local rank 0
    into a cache keyed by data, tokenizer and settings.
    Raises: DataError for a missing, empty or non-UTF-8 file or a missing column; ConfigError for bad settings.
    """

    cache_family = "corpus"

    def __init__(
        self,
        model_name_or_path: str = "minilm",
        dataset_name: str | None = None,
        dataset_config: str | None = None,
        train_file: str | list[str] | None = None,
        validation_file: str | list[str] | None = None,
        text_column: str = "text",
        txt_documents: TxtDocuments = "line",
        examples: Examples = "blocks",
        max_length: PositiveInt = 128,
        validation_fraction: OpenFraction = 0.05,
        max_train_examples: PositiveInt | None = None,
        respect_document_boundaries: bool = False,
        streaming: bool = False,
        seed: int = 42,
        **kwargs,
    ):
        """
        Args:
            model_name_or_path: Backbone whose tokenizer is used; linked from model.model_name_or_path.
            dataset_name: Hub dataset id (e.g. ``Salesforce/wikitext``); leave unset to read local files.
            dataset_config: Hub dataset configuration name (e.g. ``wikitext-2-raw-v1``).
            train_file: Local training text: .txt, .jsonl, .json, .parquet, .csv or .tsv; a glob pattern
                (``corpus/part-*.txt``) or a list of files or patterns is read as one corpus.
            validation_file: Local validation text; without one, ``validation_fraction`` of the documents is held out.
            text_column: Column holding the text (tabular files and hub datasets).
            txt_documents: How a .txt file splits into documents: ``line``, ``blank_line`` (paragraphs) or ``file``.
            examples: ``blocks`` (masked / causal LM, ELECTRA), or sentence pairs for ``nsp`` (BERT's next-sentence
                prediction) or ``sop`` (ALBERT's sentence-order prediction).
            max_length: Tokens per block or pair, special tokens included.
            validation_fraction: Share of training documents held out when there is no validation data.
            max_train_examples: Keep only the first N training documents (quick runs, fixed budgets).
            respect_document_boundaries: Keep the documents of a block apart: positions restart at each document
                and attention stays within it (a causal model predicts no document's first token from the one
                before). Off: a block is one sequence, as in transformers' run_mlm / run_clm. Blocks only.
            streaming: Read the training documents as a stream, tokenized and packed on the fly, each process its own
                part (for corpora larger than memory); needs trainer.max_steps, a validation_file (or a hub
                validation split) and trainer.val_check_interval in steps. See lit_finetune.data.streaming.
            seed: Seed for the validation hold-out and for drawing sentence pairs.
            **kwargs: Tokenizer, batch sizes (in blocks or pairs), workers and cache (see TokenizedDataModule).
        """
        super().__init__(model_name_or_path=model_name_or_path, **kwargs)
        self.files = {split: path for split, path in (("train", train_file), ("validation", validation_file)) if path}
        if not dataset_name and "train" not in self.files:
            raise ConfigError("data: give either data.dataset_name (a hub dataset) or data.train_file (local text)")
        if respect_document_boundaries and examples != "blocks":
            raise ConfigError(f"data.respect_document_boundaries: examples: {examples} are sentence pairs of one "
                              "document each, with no boundaries to keep; set it false, or examples: blocks")
        if streaming and examples != "blocks":
            raise ConfigError(f"data.streaming: examples: {examples} draws sentence pairs across the whole corpus, "
                              "which a stream never holds; stream blocks (examples: blocks) or set streaming: false")
        # The special tokens the tokenizer wraps a single sequence in ([CLS] ... [SEP] for BERT, often none for GPT).
        body = self.tokenizer("a", add_special_tokens=False)["input_ids"]
        wrapped = self.tokenizer("a")["input_ids"]
        at = next(i for i in range(len(wrapped)) if wrapped[i:i + len(body)] == body)
        self.block_prefix, self.block_suffix = wrapped[:at], wrapped[at + len(body):]
        self.block_body = max_length - len(self.block_prefix) - len(self.block_suffix)
        if self.block_body < 8:
            raise ConfigError(f"data.max_length: {max_length} leaves {self.block_body} tokens per block after the "
                              "special tokens; expected at least 8")
        self.separator_id = self.tokenizer.sep_token_id if self.tokenizer.sep_token_id is not None \
            else self.tokenizer.eos_token_id
        self.splits: datasets.DatasetDict | None = None

    # ----------------------------------------------------------------------------------------------------------- #
    # Reading documents (rank 0 only, in prepare_data)

    def read_documents(self, files: str | list[str], key: str) -> tuple[datasets.Dataset, str]:
        h = self.hparams

        def read_one(path):
            ds = readers.read_file(path, key, h.txt_documents, h.text_column)
            readers.require_columns(ds, [h.text_column], str(path), {h.text_column: "data.text_column"})
            return ds.select_columns([h.text_column])

        ds, source = readers.read_split(files, key, read_one)
        return self.documents_of(ds), source

    def documents_of(self, ds: datasets.Dataset | datasets.IterableDataset):
        """Rows of the text column as documents; empty rows (WikiText's blank lines) are skipped. Lazily for a
        stream; in `num_proc` processes, on disk, for a table."""
        column = self.hparams.text_column
        table = isinstance(ds, datasets.Dataset)
        options = dict(num_proc=self.hparams.num_proc, desc="Reading documents") if table else {}
        ds = ds.select_columns([column]).map(
            lambda batch: {"text": [(text or "").strip() for text in batch[column]]}, batched=True, **options)
        if column != "text":
            ds = ds.remove_columns([column])
        return ds.filter(lambda batch: [bool(text) for text in batch["text"]], batched=True, **options)

    def read_raw(self) -> dict[str, datasets.Dataset]:
        """The documents of every split that is tokenized up front: all of them, or all but train when it streams."""
        h = self.hparams
        raw: dict[str, datasets.Dataset] = {}
        sources: dict[str, str] = {}
        wanted = ("validation",) if h.streaming else ("train", "validation")
        if h.dataset_name:
            hub = {split: readers.read_hub(h.dataset_name, h.dataset_config, split="validation")
                   for split in wanted} if h.streaming else readers.read_hub(h.dataset_name, h.dataset_config)
            for split in wanted:
                if split in hub:
                    sources[split] = f"{h.dataset_name} [{split}]"
                    readers.require_columns(hub[split], [h.text_column], sources[split],
                                            {h.text_column: "data.text_column"})
                    raw[split] = self.documents_of(hub[split])
        for split, files in self.files.items():
            if split in wanted:
                raw[split], sources[split] = self.read_documents(files, f"data.{split}_file")
        for split, docs in raw.items():
            if len(docs) == 0:
                raise DataError(f"{sources[split]}: the {split} split has no text")
        if h.streaming:
            if "validation" not in raw:
                raise ConfigError("data.streaming: validation documents cannot be held out of a stream; give "
                                  "data.validation_file (or a hub dataset with a validation split)")
            return raw
        if h.max_train_examples:
            raw["train"] = raw["train"].select(range(min(h.max_train_examples, len(raw["train"]))))
        if "validation" not in raw:
            if not 0 < h.validation_fraction < 1 or len(raw["train"]) < 2:
                raise ConfigError(f"data.validation_fraction: got {h.validation_fraction} with "
                                  f"{len(raw['train'])} documents; give data.validation_file, or a fraction in (0, 1) "
                                  "of at least 2 documents")
            parts = raw["train"].train_test_split(test_size=h.validation_fraction, seed=h.seed)
            raw["train"], raw["validation"] = parts["train"], parts["test"]
        return raw

    def train_stream(self, passes: int | None = None) -> datasets.IterableDataset:
        """This process's blocks of the training stream, repeated `passes` times (without end by default), checked
        on its first rows before training starts."""
        h = self.hparams
        source, name, first = streaming.training_source(self.files.get("train"), h.dataset_name, h.dataset_config,
                                                        txt_documents=h.txt_documents, text_column=h.text_column)
        if h.text_column not in first:
            raise DataError(f"{name}: no column {h.text_column!r} (set by data.text_column); the columns are "
                            f"{sorted(first)}")
        if h.max_train_examples:
            source = source.take(h.max_train_examples)
        return streaming.process_part(source, self.trainer, lambda part: self.documents_of(part).map(
            self.pack, batched=True, batch_size=1000, remove_columns=["text"])).repeat(passes)

    # ----------------------------------------------------------------------------------------------------------- #
    # Tokenizing and packing

    def pack(self, batch: dict) -> dict:
        """Tokenize a batch of documents, join them with the separator and cut full blocks (the tail is dropped,
        as in transformers' run_mlm / run_clm; a split shorter than one block keeps its only, short block)."""
        enc = self.tokenizer(batch["text"], add_special_tokens=False)
        boundaries = self.hparams.respect_document_boundaries
        ids, starts, documents = [], [], []
        for doc_ids, encoding in zip(enc["input_ids"], enc.encodings):
            words = encoding.word_ids
            if boundaries:
                documents += [True] + [False] * len(doc_ids)  # the separator ends its document
            ids += doc_ids + [self.separator_id]
            starts += [i == 0 or words[i] != words[i - 1] for i in range(len(doc_ids))] + [False]
        n, prefix, suffix = self.block_body, self.block_prefix, self.block_suffix
        special = set(self.tokenizer.all_special_ids)
        out = {"input_ids": [], "special_tokens_mask": [], "word_starts": []}
        if boundaries:
            out["document_starts"] = []
        for b in range(max(len(ids) // n, 1)):
            block = prefix + ids[b * n:(b + 1) * n] + suffix
            out["input_ids"].append(block)
            out["special_tokens_mask"].append([int(t in special) for t in block])
            out["word_starts"].append([False] * len(prefix) + starts[b * n:(b + 1) * n] + [False] * len(suffix))
            if boundaries:  # a block's first document goes on from its prefix
                body = documents[b * n:(b + 1) * n]
                out["document_starts"].append([False] * (len(prefix) + 1) + body[1:] + [False] * len(suffix))
        return out

    def sentence_pairs(self, docs: datasets.Dataset, seed: int) -> datasets.Dataset:
        """BERT's recipe, simplified: fill up to max_length with whole sentences of a document, cut the run at a
        random sentence boundary into A and B, then replace B by another document's sentences (NSP) or swap A and B
        (SOP) half of the time."""
        rng = random.Random(seed)
        documents = []
        for text in docs["text"]:
            enc = self.tokenizer(split_sentences(text), add_special_tokens=False)
            documents.append([(ids, [i == 0 or e.word_ids[i] != e.word_ids[i - 1] for i in range(len(ids))])
                              for ids, e in zip(enc["input_ids"], enc.encodings) if ids])
        budget = self.hparams.max_length - 3  # [CLS] A [SEP] B [SEP]
        special = set(self.tokenizer.all_special_ids)
        cls_id, sep_id = self.tokenizer.cls_token_id, self.tokenizer.sep_token_id
        rows = {"input_ids": [], "token_type_ids": [], "special_tokens_mask": [], "word_starts": [], "pair_label": []}
        for d, sentences in enumerate(documents):
            start = 0
            while start < len(sentences) - 1:  # a pair needs two sentences
                end, length = start, 0
                while end < len(sentences) and (length < budget or end - start < 2):
                    length += len(sentences[end][0])
                    end += 1
                cut = rng.randint(start + 1, end - 1)
                a, b, label = sentences[start:cut], sentences[cut:end], 0
                if self.hparams.examples == "nsp" and rng.random() < 0.5 and len(documents) > 1:
                    other = rng.choice([i for i in range(len(documents)) if i != d and documents[i]] or [d])
                    first = rng.randrange(len(documents[other]))
                    b, label = documents[other][first:first + max(1, end - cut)], 1
                    end = cut  # the unused sentences start the next pair, as in BERT
                elif self.hparams.examples == "sop" and rng.random() < 0.5:
                    a, b, label = b, a, 1
                a_ids, a_starts = [t for ids, _ in a for t in ids], [w for _, ws in a for w in ws]
                b_ids, b_starts = [t for ids, _ in b for t in ids], [w for _, ws in b for w in ws]
                while len(a_ids) + len(b_ids) > budget:  # trim the longer segment, from a random end
                    longer = (a_ids, a_starts) if len(a_ids) > len(b_ids) else (b_ids, b_starts)
                    for seq in longer:
                        del seq[0 if rng.random() < 0.5 else -1]
                input_ids = [cls_id, *a_ids, sep_id, *b_ids, sep_id]
                rows["input_ids"].append(input_ids)
                rows["token_type_ids"].append([0] * (len(a_ids) + 2) + [1] * (len(b_ids) + 1))
                rows["special_tokens_mask"].append([int(t in special) for t in input_ids])
                rows["word_starts"].append([False, *a_starts, False, *b_starts, False])
                rows["pair_label"].append(label)
                start = end
        return datasets.Dataset.from_dict(rows)

    def build_splits(self, fingerprint: str) -> tuple[dict, dict]:
        """Read, check and tokenize every split: the splits to cache and their metadata."""
        raw = self.read_raw()
        h = self.hparams
        if h.examples == "blocks":
            examples = datasets.DatasetDict({
                split: docs.map(self.pack, batched=True, batch_size=1000, remove_columns=["text"],
                                num_proc=h.num_proc, desc=f"Packing {split}", new_fingerprint=f"{fingerprint}-{split}")
                for split, docs in raw.items()})
        else:
            if self.tokenizer.cls_token_id is None or self.tokenizer.sep_token_id is None:
                raise ConfigError(f"data.examples: {h.examples} builds [CLS] A [SEP] B [SEP] pairs, but the tokenizer "
                                  f"of {h.model_name_or_path!r} has no [CLS] / [SEP] tokens")
            examples = datasets.DatasetDict({split: self.sentence_pairs(docs, h.seed + i)
                                             for i, (split, docs) in enumerate(raw.items())})
            for split, ds in examples.items():
                if len(ds) == 0:
                    raise DataError(f"data: no {split} document has two sentences, so no {h.examples} pairs can be "
                                    "made; use documents of several sentences (e.g. data.txt_documents: blank_line)")
        return examples, dict(documents={s: len(d) for s, d in raw.items()},
                              examples={s: len(b) for s, b in examples.items()}, kind=h.examples,
                              max_length=h.max_length)

    def summary(self, meta: dict) -> str:
        what = "blocks" if meta["kind"] == "blocks" else f"{meta['kind']} sentence pairs"
        return (f"Made {meta['examples']} {what} of up to {meta['max_length']} tokens from {meta['documents']} "
                "documents")

    def setup(self, stage: str | None = None) -> None:
        self.meta = streaming.load_splits(self, stage)

    @property
    def packing_key(self) -> str | None:
        """The setting that puts several documents in a row (its model must keep them apart), if on."""
        return "data.respect_document_boundaries" if self.hparams.respect_document_boundaries else None

    def loader(self, split: str, train: bool = False) -> DataLoader:
        collate = BlockCollator(self.tokenizer.pad_token_id or 0)
        if train and self.hparams.streaming:
            return streaming.loader(self, self.splits["train"].with_format("numpy"), collate)
        return self.dataloader(self.splits[split].with_format("numpy"), train, collate)
