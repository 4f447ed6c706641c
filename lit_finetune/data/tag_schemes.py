"""Entity tag schemes (IOB1, IOB2, BIOES): which tag may follow which, for checking data and constraining a CRF."""

from __future__ import annotations

from typing import Literal

TagScheme = Literal["IOB1", "IOB2", "BIOES"]
OUTSIDE = "O"


def split_tag(tag: str) -> tuple[str, str]:
    """'B-PER' -> ('B', 'PER'); 'O' -> ('O', '')."""
    prefix, _, entity_type = tag.partition("-")
    return (prefix, entity_type) if tag != OUTSIDE else (OUTSIDE, "")


def check_tag(tag: str, scheme: TagScheme) -> bool:
    """Whether `tag` is well formed in the scheme (O, or a known prefix and a type)."""
    prefix, entity_type = split_tag(tag)
    prefixes = "BIES" if scheme == "BIOES" else "BI"
    return tag == OUTSIDE or (len(prefix) == 1 and prefix in prefixes and bool(entity_type))


def can_start(tag: str, scheme: TagScheme) -> bool:
    """Whether a sentence may open with `tag`."""
    return can_follow(OUTSIDE, tag, scheme)


def can_end(tag: str, scheme: TagScheme) -> bool:
    """Whether a sentence may close with `tag` (only BIOES marks the end of an entity)."""
    return scheme != "BIOES" or split_tag(tag)[0] in ("O", "E", "S")


def can_follow(previous: str, tag: str, scheme: TagScheme) -> bool:
    """Whether `tag` may come right after `previous`."""
    prev_prefix, prev_type = split_tag(previous)
    prefix, entity_type = split_tag(tag)
    inside_same = prev_prefix != OUTSIDE and prev_type == entity_type
    if scheme == "IOB2":  # I-X continues an entity that B-X opened
        return prefix != "I" or inside_same
    if scheme == "IOB1":  # I-X opens or continues; B-X only splits two adjacent entities of the same type
        return prefix != "B" or inside_same
    # BIOES: an open entity (B-X, I-X) must go on with I-X or E-X; anything else may follow a closed one
    if prev_prefix in ("B", "I"):
        return prefix in ("I", "E") and inside_same
    return prefix in ("O", "B", "S")


def first_invalid(tags: list[str], scheme: TagScheme) -> int | None:
    """Index of the first tag the scheme forbids where it stands (including an unclosed BIOES entity at the end)."""
    previous = OUTSIDE
    for i, tag in enumerate(tags):
        if not can_follow(previous, tag, scheme):
            return i
        previous = tag
    return len(tags) - 1 if tags and not can_end(tags[-1], scheme) else None
