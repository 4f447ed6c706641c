"""A linear-chain CRF over per-word tag scores, whose Viterbi decoding only yields sequences the tag scheme allows.

transformers has no CRF head, and the maintained PyTorch CRFs take no transition constraints, hence this one.
"""

from __future__ import annotations

import torch
from torch import nn

from lit_finetune.data.tag_schemes import TagScheme, can_end, can_follow, can_start

FORBIDDEN = -1e4  # added to a forbidden transition's score: exp() of it is 0 in fp32, and no inf - inf NaNs


class CRF(nn.Module):
    """Learned start, end and tag-to-tag transition scores; forbidden ones are pinned to ``FORBIDDEN`` in both the
    likelihood (no probability is spent on invalid paths) and the decoding."""

    def __init__(self, tags: list[str], scheme: TagScheme):
        super().__init__()
        n = len(tags)
        self.start = nn.Parameter(torch.zeros(n))
        self.end = nn.Parameter(torch.zeros(n))
        self.transitions = nn.Parameter(torch.zeros(n, n))  # [from, to]
        self.register_buffer("start_allowed", torch.tensor([can_start(t, scheme) for t in tags]), persistent=False)
        self.register_buffer("end_allowed", torch.tensor([can_end(t, scheme) for t in tags]), persistent=False)
        self.register_buffer("allowed", torch.tensor([[can_follow(a, b, scheme) for b in tags] for a in tags]),
                             persistent=False)

    def scores(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Start, end and transition scores with the forbidden ones pinned."""
        return (self.start.masked_fill(~self.start_allowed, FORBIDDEN),
                self.end.masked_fill(~self.end_allowed, FORBIDDEN),
                self.transitions.masked_fill(~self.allowed, FORBIDDEN))

    def log_likelihood(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """log p(tags | emissions) per sequence; `emissions` [batch, length, tags], `tags` and `mask` [batch, length],
        every sequence left-aligned with at least one position."""
        emissions = emissions.float()  # the recursion sums many terms: keep it out of half precision
        start, end, transitions = self.scores()
        batch = torch.arange(len(tags), device=tags.device)
        last = mask.sum(1) - 1
        # Score of the given path.
        gold = start[tags[:, 0]] + emissions[batch, 0, tags[:, 0]]
        step = transitions[tags[:, :-1], tags[:, 1:]] + emissions[:, 1:].gather(2, tags[:, 1:, None]).squeeze(2)
        gold = gold + (step * mask[:, 1:]).sum(1) + end[tags[batch, last]]
        # Log-sum over all paths (forward algorithm).
        alpha = start + emissions[:, 0]
        for t in range(1, emissions.shape[1]):
            stepped = torch.logsumexp(alpha[:, :, None] + transitions + emissions[:, t, None, :], dim=1)
            alpha = torch.where(mask[:, t, None], stepped, alpha)
        return gold - torch.logsumexp(alpha + end, dim=1)

    @torch.no_grad()
    def decode(self, emissions: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
        """The best allowed tag sequence of each item (Viterbi), as many tags as its mask has positions."""
        emissions = emissions.float()
        start, end, transitions = self.scores()
        score = start + emissions[:, 0]
        backpointers = []
        for t in range(1, emissions.shape[1]):
            best, index = (score[:, :, None] + transitions).max(dim=1)
            backpointers.append(index)
            score = torch.where(mask[:, t, None], best + emissions[:, t], score)
        score = score + end
        lengths = mask.sum(1).tolist()
        paths = []
        for i, length in enumerate(lengths):
            tag = int(score[i].argmax())
            path = [tag]
            for t in range(length - 1, 0, -1):  # backpointers[t - 1] leads from position t to t - 1
                tag = int(backpointers[t - 1][i, tag])
                path.append(tag)
            paths.append(path[::-1])
        return paths
