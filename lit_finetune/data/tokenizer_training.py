"""`lit-finetune tokenizer`: train a tokenizer on a corpus for pretraining from scratch, with the `tokenizers` library.

WordPiece (BERT-style: lowercasing optional, [CLS] A [SEP] B [SEP]) for encoders; byte-level BPE (GPT-2-style, one
end-of-text token) for causal models. The result is a Hugging Face tokenizer folder: pass it as
``--model.init_args.tokenizer_name_or_path`` with a size preset such as ``small:bert``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from lit_finetune.data import readers
from lit_finetune.data.readers import TxtDocuments
from lit_finetune.errors import ConfigError, DataError
from lit_finetune.io import atomic_directory

WORDPIECE_SPECIALS = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
                      "mask_token": "[MASK]"}
END_OF_TEXT = "<|endoftext|>"


def read_texts(train_file: str, text_column: str, txt_documents: TxtDocuments) -> list[str]:
    ds = readers.read_file(train_file, "--train_file", txt_documents, text_column)
    readers.require_columns(ds, [text_column], str(train_file), {text_column: "--text_column"})
    texts = [t for t in readers.column(ds, text_column).to_pylist() if t and t.strip()]
    if not texts:
        raise DataError(f"--train_file: {train_file} has no text")
    return texts


def wordpiece(vocab_size: int, lowercase: bool) -> tuple[Tokenizer, trainers.Trainer]:
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    return tokenizer, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(WORDPIECE_SPECIALS.values()))


def byte_level_bpe(vocab_size: int) -> tuple[Tokenizer, trainers.Trainer]:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    return tokenizer, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[END_OF_TEXT],
                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet())


def train_tokenizer(
    train_file: str,
    output_dir: str,
    kind: Literal["wordpiece", "bpe"] = "wordpiece",
    vocab_size: int = 8000,
    lowercase: bool = True,
    text_column: str = "text",
    txt_documents: TxtDocuments = "line",
) -> Path:
    """Train a tokenizer on a corpus and save it as a Hugging Face tokenizer folder.

    Args:
        train_file: Training text: .txt (documents by line, paragraph or file) or csv / tsv / jsonl / json / parquet.
        output_dir: Folder to write (replaced atomically if it exists).
        kind: ``wordpiece`` for encoders (BERT, ELECTRA, ALBERT), ``bpe`` (byte-level) for causal models (GPT).
        vocab_size: Size of the vocabulary, special tokens included.
        lowercase: Lowercase text first (WordPiece only).
        text_column: Column of the text in tabular files.
        txt_documents: How a .txt file splits into documents: ``line``, ``blank_line`` or ``file``.
    """
    smallest = 257 if kind == "bpe" else 100  # byte-level BPE starts from all 256 bytes
    if vocab_size < smallest:
        raise ConfigError(f"--vocab_size: got {vocab_size}; a {kind} vocabulary needs at least {smallest}")
    texts = read_texts(train_file, text_column, txt_documents)
    if kind == "wordpiece":
        tokenizer, trainer = wordpiece(vocab_size, lowercase)
        specials = {**WORDPIECE_SPECIALS, "model_input_names": ["input_ids", "token_type_ids", "attention_mask"]}
    else:
        tokenizer, trainer = byte_level_bpe(vocab_size)
        specials = {"bos_token": END_OF_TEXT, "eos_token": END_OF_TEXT, "unk_token": END_OF_TEXT,
                    "pad_token": END_OF_TEXT}
    tokenizer.train_from_iterator(texts, trainer, length=len(texts))
    if kind == "wordpiece":
        cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
        tokenizer.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, model_max_length=512, **specials)
    with atomic_directory(output_dir) as tmp:
        fast.save_pretrained(tmp)
    print(f"Trained a {kind} tokenizer ({tokenizer.get_vocab_size()} tokens) on {len(texts)} documents of "
          f"{train_file}; saved to {output_dir}")
    return Path(output_dir)
