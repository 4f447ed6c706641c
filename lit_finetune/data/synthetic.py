"""Deterministic generator of the embedded quickstart dataset: aspect-based sentiment pairs.

The quickstart ships its data as code so it runs offline. Each example pairs a short review
with one aspect word; the label is the sentiment toward that aspect. Negation, contrast and
several aspects per review keep a bag-of-words baseline well short of what an
aspect-aware model can reach, so the tutorial shows fine-tuning actually helping.
"""

from __future__ import annotations

import csv
import os
import random
from pathlib import Path

from lit_finetune.io import atomic_file

LABELS = ("negative", "neutral", "positive")
FIELDS = ("id", "review", "aspect", "label")
NOISE_RATE = 0.03  # share of labels flipped at random, so no model is perfect

POSITIVE = ("good", "great", "excellent", "superb", "wonderful", "fantastic", "lovely", "impressive", "outstanding", "pleasant", "perfect", "solid")
NEGATIVE = ("bad", "poor", "terrible", "awful", "disappointing", "mediocre", "dreadful", "horrible", "subpar", "unpleasant", "lousy", "weak")
NEUTRAL = ("average", "standard", "ordinary", "typical", "as described", "as expected")
DEGREES = ("", "", "", "very ", "extremely ", "really ", "quite ", "fairly ", "somewhat ", "slightly ")
NEGATORS = ("not ", "never ", "hardly ", "far from ", "by no means ")
NEGATORS_OF_PRAISE = ("not very ", "barely ")  # read naturally only before a mild positive word

# domain -> opening sentences (sentiment-free, no aspect words) and aspect -> (own positive, own negative) adjectives.
DOMAINS = {
    "restaurant": {
        "openers": ("We came here for dinner on a Friday.", "I visited with two friends.", "We booked a table for six.", "This was our second visit."),
        "aspects": {
            "food": (("delicious", "tasty", "fresh"), ("bland", "greasy", "stale")),
            "waiter": (("friendly", "attentive"), ("rude", "careless")),
            "service": (("quick", "attentive"), ("slow", "sloppy")),
            "ambience": (("cozy", "charming", "relaxing"), ("noisy", "gloomy", "cramped")),
            "price": (("reasonable", "fair"), ("steep", "inflated")),
            "dessert": (("rich", "tasty"), ("dry", "bland")),
            "wine": (("smooth", "fresh"), ("sour", "flat")),
        },
    },
    "hotel": {
        "openers": ("We stayed three nights in May.", "I was here for a work trip.", "We checked in late on a Sunday.", "Our family spent a weekend here."),
        "aspects": {
            "room": (("spacious", "clean"), ("cramped", "dirty")),
            "staff": (("helpful", "welcoming"), ("rude", "unhelpful")),
            "location": (("central", "convenient"), ("remote", "inconvenient")),
            "breakfast": (("tasty", "generous"), ("bland", "stingy")),
            "wifi": (("fast", "reliable"), ("slow", "unreliable")),
            "pool": (("clean", "warm"), ("dirty", "cold")),
            "bed": (("comfortable", "soft"), ("lumpy", "uncomfortable")),
        },
    },
    "gadget": {
        "openers": ("I bought this a month ago.", "I have used it daily for two weeks.", "This replaced my old one.", "It arrived on Tuesday."),
        "aspects": {
            "battery": (("long-lasting", "dependable"), ("short-lived", "unreliable")),
            "screen": (("sharp", "bright"), ("dim", "blurry")),
            "keyboard": (("responsive", "comfortable"), ("mushy", "stiff")),
            "camera": (("sharp", "fast"), ("grainy", "blurry")),
            "speaker": (("loud", "clear"), ("tinny", "quiet")),
            "design": (("sleek", "elegant"), ("clunky", "ugly")),
            "charger": (("fast", "sturdy"), ("slow", "flimsy")),
        },
    },
}


def _adjective(rng: random.Random, own: tuple, polarity: int) -> str:
    """Mix generic and aspect-specific words so synonyms vary per aspect."""
    return rng.choice(POSITIVE + own[0] if polarity > 0 else NEGATIVE + own[1])


def _clause(rng: random.Random, aspect: str, own: tuple, polarity: int) -> str:
    """Say `polarity` about `aspect`, often through negation so words alone mislead."""
    the = f"the {aspect}"
    if polarity == 0:
        return rng.choice((
            f"{the} was {rng.choice(NEUTRAL)}",
            f"{the} was neither {_adjective(rng, own, 1)} nor {_adjective(rng, own, -1)}",
            f"we did not try {the}",
            f"nothing stood out about {the}",
            f"I have no strong opinion about {the}",
        ))
    kind = rng.random()
    if kind < 0.35:  # plain; intensifiers and downtoners only before the milder, aspect-specific words
        adjective = _adjective(rng, own, polarity)
        return f"{the} was {rng.choice(DEGREES) if adjective in own[0] + own[1] else ''}{adjective}"
    if kind < 0.65:  # negated opposite: "not bad" -> positive, "not great" -> negative
        adjective = _adjective(rng, own, -polarity)
        return f"{the} was {rng.choice(NEGATORS + (NEGATORS_OF_PRAISE if adjective in own[0] else ()))}{adjective}"
    if kind < 0.93:  # verbs and idioms, several of them negated
        if polarity > 0:
            return rng.choice((f"I loved {the}", f"we enjoyed {the}", f"I could not fault {the}",
                               f"I can't complain about {the}", f"we had nothing bad to say about {the}"))
        return rng.choice((f"I hated {the}", f"we disliked {the}", f"I did not enjoy {the}",
                           f"I would not recommend {the}", f"we had nothing good to say about {the}"))
    # double negation, kept rare
    return f"I would not say {the} was not {_adjective(rng, own, polarity)}"


def _capitalize(text: str) -> str:
    """Upper-case only the first letter; str.capitalize would lower-case the "I" inside."""
    return text[0].upper() + text[1:]


def _join(rng: random.Random, clauses: list[str], polarities: list[int]) -> str:
    """Chain clauses with contrastive connectors where polarity flips, in varying order."""
    text = clauses[0]
    for i in range(1, len(clauses)):
        contrast = polarities[i - 1] * polarities[i] < 0
        if contrast and i == 1 and rng.random() < 0.3:
            text = f"although {text}, {clauses[i]}"
        else:
            text += rng.choice((", but ", "; however, ", ", while ", ", yet ") if contrast else (", and ", "; also, ", ". "))
            text += clauses[i] if text[-2] != "." else _capitalize(clauses[i])
    return _capitalize(text) + "."


def _review(rng: random.Random) -> tuple[str, list[tuple[str, int]]]:
    """Draw one review and the (aspect, polarity) pairs to ask about it."""
    domain = DOMAINS[rng.choice(tuple(DOMAINS))]
    aspects = rng.sample(tuple(domain["aspects"]), rng.choices((1, 2, 3), weights=(3, 4, 3))[0])
    polarities = rng.choices((-1, 0, 1), weights=(2, 1, 2), k=len(aspects))
    clauses = [_clause(rng, a, domain["aspects"][a], p) for a, p in zip(aspects, polarities)]
    review = _join(rng, clauses, polarities)
    if rng.random() < 0.5:
        review = f"{rng.choice(domain['openers'])} {review}"
    pairs = list(zip(aspects, polarities))
    if rng.random() < 0.4:  # an aspect the review never mentions is neutral
        pairs.append((rng.choice([a for a in domain["aspects"] if a not in aspects]), 0))
    return review, pairs


def generate(num_examples: int, seed: int) -> list[dict]:
    """Return `num_examples` labelled pairs; the same seed always gives the same list."""
    rng = random.Random(seed)
    examples: list[dict] = []
    while len(examples) < num_examples:
        review, pairs = _review(rng)
        for aspect, polarity in pairs:
            label = LABELS[polarity + 1]
            if rng.random() < NOISE_RATE:
                label = rng.choice([other for other in LABELS if other != label])
            examples.append({"id": f"ex-{len(examples):06d}", "review": review, "aspect": aspect, "label": label})
    return examples[:num_examples]


def _write_csv(path: Path, rows: list[dict]) -> None:
    with atomic_file(path) as handle:  # readers never see a half-written CSV
        writer = csv.DictWriter(handle, fieldnames=FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def write_quickstart_data(
    output_dir: str | os.PathLike,
    seed: int = 0,
    sizes: tuple[tuple[str, int], ...] = (("train", 3000), ("validation", 500), ("test", 500)),
) -> dict[str, Path]:
    """Write `<split>.csv` per split, each from its own seed so splits differ; return split -> path."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for index, (split, size) in enumerate(sizes):
        paths[split] = output_dir / f"{split}.csv"
        _write_csv(paths[split], generate(size, seed * len(sizes) + index))
    return paths
