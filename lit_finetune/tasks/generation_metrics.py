"""Scores for generated text against references: corpus BLEU (sacrebleu) and ROUGE-1/2/L F1 (rouge_score), as plain
functions over lists of strings, and as a torchmetrics Metric that accumulates them batch by batch.

All scores are on a 0-100 scale, as sacrebleu and most papers report them.
"""

from __future__ import annotations

import torch
import torchmetrics

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def rouge_scorer(use_stemmer: bool):
    """rouge_score's scorer, imported here: it imports nltk, seconds of every command's start-up otherwise."""
    from rouge_score.rouge_scorer import RougeScorer  # noqa: PLC0415

    return RougeScorer(list(ROUGE_TYPES), use_stemmer=use_stemmer)
BLEU_ORDER = 4  # sacrebleu's default n-gram order


def check_lengths(predictions: list[str], references: list[str]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"got {len(predictions)} predictions for {len(references)} references")


def corpus_bleu(predictions: list[str], references: list[str], tokenize: str = "13a") -> float:
    """sacrebleu's corpus BLEU with one reference per prediction (its default 13a tokenization, cased)."""
    import sacrebleu  # noqa: PLC0415  (imported where used, like rouge_score: every command's start-up pays otherwise)

    check_lengths(predictions, references)
    return sacrebleu.corpus_bleu(predictions, [references], tokenize=tokenize).score


def rouge(predictions: list[str], references: list[str], use_stemmer: bool = True) -> dict[str, float]:
    """Mean ROUGE-1/2/L F1 over the pairs (rouge_score lowercases and keeps only [a-z0-9] tokens)."""
    check_lengths(predictions, references)
    scorer = rouge_scorer(use_stemmer)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for prediction, reference in zip(predictions, references):
        for name, score in scorer.score(reference, prediction).items():
            totals[name] += score.fmeasure
    return {name: 100 * total / max(len(predictions), 1) for name, total in totals.items()}


def generation_scores(predictions: list[str], references: list[str]) -> dict[str, float]:
    """``bleu``, ``rouge1``, ``rouge2``, ``rougeL`` of one set of predictions."""
    return {"bleu": corpus_bleu(predictions, references), **rouge(predictions, references)}


class GenerationScores(torchmetrics.Metric):
    """Corpus BLEU and mean ROUGE F1, accumulated over batches as sums of counts (BLEU's n-gram matches and lengths,
    ROUGE's F1 totals), so processes sync with a plain sum and the result equals ``generation_scores`` on all pairs."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, tokenize: str = "13a", use_stemmer: bool = True, **kwargs):
        super().__init__(**kwargs)
        import sacrebleu  # noqa: PLC0415

        # Per-sentence statistics only; the corpus score is computed from their sums.
        self.bleu = sacrebleu.BLEU(tokenize=tokenize, effective_order=True)
        self.scorer = rouge_scorer(use_stemmer)
        # hypothesis length, reference length, matches per n-gram order, n-grams per order
        self.add_state("bleu_stats", torch.zeros(2 + 2 * BLEU_ORDER, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("rouge_f1", torch.zeros(len(ROUGE_TYPES), dtype=torch.float32), dist_reduce_fx="sum")
        self.add_state("pairs", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, predictions: list[str], references: list[str]) -> None:
        check_lengths(predictions, references)
        bleu, f1 = [], []
        for prediction, reference in zip(predictions, references):
            score = self.bleu.sentence_score(prediction, [reference])
            bleu.append([score.sys_len, score.ref_len, *score.counts, *score.totals])
            scores = self.scorer.score(reference, prediction)
            f1.append([scores[name].fmeasure for name in ROUGE_TYPES])
        if bleu:
            self.bleu_stats += torch.tensor(bleu, dtype=torch.long, device=self.device).sum(0)
            self.rouge_f1 += torch.tensor(f1, dtype=torch.float32, device=self.device).sum(0)
            self.pairs += len(bleu)

    def compute(self) -> dict[str, torch.Tensor]:
        stats = self.bleu_stats.tolist()
        bleu = type(self.bleu).compute_bleu(correct=stats[2:2 + BLEU_ORDER], total=stats[2 + BLEU_ORDER:],
                                           sys_len=stats[0], ref_len=stats[1], smooth_method="exp").score
        rouge_means = 100 * self.rouge_f1 / self.pairs.clamp(min=1)
        return {"bleu": torch.tensor(bleu, device=self.device),
                **{name: rouge_means[i] for i, name in enumerate(ROUGE_TYPES)}}
