"""Padding-free packing: several examples share one row of up to ``max_length`` tokens, and ``position_ids`` restart
at each example, so attention never crosses examples.

transformers reads the restarts as example boundaries when no 2D attention mask is passed (``masking_utils``
builds a block-diagonal causal mask for eager / sdpa / flex attention; flash-attention-2 runs varlen over them).
A token at position 0 starts an example: nothing before it predicts it, so its label is -100. Bidirectional
encoders (BERT, ELECTRA) never read boundaries from positions: they get a 4D mask built by transformers'
``create_bidirectional_mask`` (``document_mask``).
"""

from __future__ import annotations

import random
from typing import Literal

import torch
from transformers.masking_utils import create_bidirectional_mask, packed_sequence_mask_function

from lit_finetune.data.base import token_lengths

IGNORE = -100  # label of tokens outside the loss (transformers' convention)
Packing = Literal["none", "padding_free"]


def first_fit_decreasing(lengths: list[int], capacity: int, seed: int) -> list[list[int]]:
    """Bins of example indices, each holding at most `capacity` tokens: the longest examples first, each into the
    first bin it fits (ties in a seeded order). A max segment tree over the bins' free space finds that bin in
    O(log n), so a million examples pack in seconds."""
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    order.sort(key=lambda i: -lengths[i])  # stable: equal lengths keep the seeded order
    size = 1
    while size < max(len(lengths), 1):
        size *= 2
    free = [0] * (2 * size)  # leaf b: free tokens of bin b (0 until the bin opens); node: max over its leaves
    bins: list[list[int]] = []
    for i in order:
        need = lengths[i]
        if free[1] < need:  # no open bin has room: open the next one
            b = len(bins)
            bins.append([])
            node = size + b
            free[node] = capacity
            while node > 1:
                node //= 2
                free[node] = max(free[2 * node], free[2 * node + 1])
        node = 1
        while node < size:  # the leftmost bin with room
            node = 2 * node if free[2 * node] >= need else 2 * node + 1
        bins[node - size].append(i)
        free[node] -= need
        while node > 1:
            node //= 2
            free[node] = max(free[2 * node], free[2 * node + 1])
    return bins


def positions_from_starts(starts: torch.Tensor) -> torch.Tensor:
    """Position ids that restart at 0 wherever `starts` (B x L, bool) is True; the first token of a row always
    starts."""
    index = torch.arange(starts.shape[-1], device=starts.device).expand_as(starts)
    starts = starts.clone()
    starts[..., 0] = True
    last_start = torch.where(starts, index, torch.zeros_like(index)).cummax(-1).values
    return index - last_start


class PackedRows(torch.utils.data.Dataset):
    """A tokenized split seen as packed rows: item i is the examples of bin i (a dict of lists, as ``datasets``
    returns for a list of indices)."""

    def __init__(self, dataset, bins: list[list[int]], lengths: list[int], max_length: int):
        self.dataset, self.bins = dataset, bins
        self.fill = sum(lengths) / max(len(bins) * max_length, 1)  # share of the rows' tokens that are examples'

    def __len__(self) -> int:
        return len(self.bins)

    def __getitem__(self, i: int) -> dict:
        return self.dataset[self.bins[i]]


def pack_split(dataset, max_length: int, seed: int) -> PackedRows:
    """`dataset` (examples of at most `max_length` tokens) packed into rows by first-fit-decreasing."""
    lengths = token_lengths(dataset)
    return PackedRows(dataset, first_fit_decreasing(lengths, max_length, seed), lengths, max_length)


class PackedCollator:
    """Rows of concatenated examples: ``input_ids``, ``labels`` (-100 on each example's first token, on prompt
    tokens and on padding), ``position_ids`` restarting at each example, ``attention_mask`` marking real tokens
    (for counting; the model is not given it, see module docstring) and ``example_id`` (a list per row). Rows are
    right-padded to the batch's longest (or a multiple of `pad_to_multiple_of`); padding forms a segment of its
    own, after every real token, so a causal model's real tokens never see it."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        self.pad_token_id, self.pad_to_multiple_of = pad_token_id, pad_to_multiple_of

    def __call__(self, rows: list[dict]) -> dict:
        rows = [(row["input_ids"], row.get("labels", row["input_ids"]), row.get("example_id", [])) for row in rows]
        lengths = torch.tensor([sum(len(example) for example in ids) for ids, _, _ in rows])
        width = int(lengths.max())
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(rows), width), self.pad_token_id)
        labels = torch.full((len(rows), width), IGNORE)
        # Padding counts 0, 1, 2, ... from the row's end: a segment of its own.
        position_ids = torch.arange(width)[None, :] - lengths[:, None]
        for r, (ids, row_labels, _) in enumerate(rows):
            at = 0
            for example, example_labels in zip(ids, row_labels):
                n = len(example)
                input_ids[r, at:at + n] = torch.as_tensor(example)
                labels[r, at + 1:at + n] = torch.as_tensor(example_labels[1:])
                position_ids[r, at:at + n] = torch.arange(n)
                at += n
        real = torch.arange(width)[None, :] < lengths[:, None]
        return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids,
                "attention_mask": real.long(), "example_id": [list(example_ids) for _, _, example_ids in rows]}


def document_mask(model, attention_mask: torch.Tensor, position_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The 4D attention mask of a bidirectional encoder over rows of several documents: a token sees the real
    tokens of its own document only, in the format the model's attention implementation takes."""
    starts = position_ids == 0
    starts[:, 0] = True
    documents = starts.long().cumsum(-1)
    shape = (*attention_mask.shape, 1)
    return create_bidirectional_mask(config=model.config,
                                     inputs_embeds=torch.empty(shape, dtype=dtype, device=attention_mask.device),
                                     attention_mask=attention_mask, and_mask_function=packed_sequence_mask_function(
                                         documents), allow_is_bidirectional_skip=False)


def causal_inputs(batch: dict, labels: torch.Tensor) -> tuple[dict, torch.Tensor]:
    """A causal LM's inputs and labels for a batch: packed rows (with ``position_ids``) go without the 2D mask, so
    transformers reads the boundaries from the positions, and no example's first token is predicted from the one
    before; padded rows go with their attention mask."""
    if "position_ids" not in batch:
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}, labels
    positions = batch["position_ids"]
    # With a key-value cache (on by default, even in training) transformers never looks for packed rows.
    inputs = {"input_ids": batch["input_ids"], "position_ids": positions, "use_cache": False}
    return inputs, labels.masked_fill(positions == 0, IGNORE)


def encoder_inputs(model, batch: dict) -> dict:
    """A bidirectional encoder's attention inputs for a batch: rows of several documents (with ``position_ids``)
    get the 4D mask that keeps them apart and their restarted positions; other rows their 2D mask."""
    if "position_ids" not in batch:
        return {"attention_mask": batch["attention_mask"]}
    dtype = next(model.parameters()).dtype
    if torch.is_autocast_enabled(batch["input_ids"].device.type):
        dtype = torch.get_autocast_dtype(batch["input_ids"].device.type)
    return {"attention_mask": document_mask(model, batch["attention_mask"], batch["position_ids"], dtype),
            "position_ids": batch["position_ids"]}


@torch.no_grad()
def keeps_examples_apart(model, causal: bool) -> float:
    """How much a packed example's logits differ from the same example run alone (relative to their scale): about
    1e-6 in fp32 for a model that keeps examples apart, order 1 for one that lets them see each other."""
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(0)
    first, second = (torch.randint(5, model.config.vocab_size, (n,), generator=generator) for n in (7, 5))

    def inputs(ids: torch.Tensor, positions: torch.Tensor | None) -> dict:
        batch = {"input_ids": ids[None].to(device), "attention_mask": torch.ones(1, len(ids), dtype=torch.long,
                                                                                 device=device)}
        if positions is not None:
            batch["position_ids"] = positions[None].to(device)
        if causal:
            return causal_inputs(batch, batch["input_ids"])[0]
        return {"input_ids": batch["input_ids"], **encoder_inputs(model, batch)}

    packed_inputs = inputs(torch.cat([first, second]), torch.cat([torch.arange(7), torch.arange(5)]))
    alone_inputs = inputs(second, None)
    was_training = model.training
    model.eval()
    try:
        expected = model(**alone_inputs).logits[0].float()
        got = model(**packed_inputs).logits[0, 7:].float()
    finally:
        model.train(was_training)
    return float((got - expected).abs().max() / expected.abs().max().clamp_min(1e-6))
