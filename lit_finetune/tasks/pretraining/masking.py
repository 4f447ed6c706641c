"""BERT's masking of input tokens for masked-LM and ELECTRA, with whole-word masking as an option.

Not transformers' collator: its whole-word mode needs offset mappings (which do not survive packing documents into
blocks) and replaces every selected token by [MASK], where BERT's own whole-word masking keeps 80/10/10 per token.
"""

from __future__ import annotations

import torch

IGNORE = -100  # label of tokens that carry no loss


def select_tokens(special_tokens_mask: torch.Tensor, word_starts: torch.Tensor | None, probability: float,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Each token (or each whole word) is selected with `probability`; special and padding tokens never are."""
    draw = torch.rand(special_tokens_mask.shape, generator=generator).to(special_tokens_mask.device) < probability
    selectable = ~special_tokens_mask
    if word_starts is None:
        return draw & selectable
    starts = word_starts & selectable
    word_index = starts.long().cumsum(-1)  # word k's tokens share k; tokens before the first start share 0
    chosen = torch.zeros(starts.shape[0], starts.shape[1] + 1, dtype=torch.long, device=starts.device)
    chosen.scatter_reduce_(1, word_index * starts, (draw & starts).long(), reduce="amax")
    chosen[:, 0] = 0  # a word cut off at the block's start has no start token here: never selected
    return chosen.gather(1, word_index).bool() & selectable


def mask_tokens(input_ids: torch.Tensor, selected: torch.Tensor, mask_token_id: int, vocab_size: int,
                mask_prob: float = 0.8, random_prob: float = 0.1,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Of the selected tokens, `mask_prob` become [MASK], `random_prob` a random token, the rest stay; returns the
    corrupted inputs and the labels (the original ids where selected, IGNORE elsewhere)."""
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE))
    draw = torch.rand(input_ids.shape, generator=generator).to(input_ids.device)
    random_ids = torch.randint(vocab_size, input_ids.shape, generator=generator).to(input_ids.device)
    corrupted = torch.where(selected & (draw < mask_prob), torch.full_like(input_ids, mask_token_id), input_ids)
    replace = selected & (draw >= mask_prob) & (draw < mask_prob + random_prob)
    return torch.where(replace, random_ids, corrupted), labels
