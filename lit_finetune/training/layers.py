"""A Hugging Face model seen as layer groups from the bottom up: embeddings, each Transformer block, the head.

Freezing, gradual unfreezing, layer-wise learning rates, LoRA and pruning all need to know which parameters are the
embeddings, which block is how deep, and which are the task head; this is their one definition of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from lit_finetune.errors import ConfigError


@dataclass
class LayerGroup:
    """Parameters that are frozen, unfrozen and given a learning rate together; ``depth`` counts from the top (the
    head is 0, the top block 1, ..., the embeddings the deepest)."""

    name: str
    depth: int
    params: list[nn.Parameter] = field(default_factory=list)


def unwrapped(model: nn.Module) -> nn.Module:
    """The Hugging Face model inside a PEFT wrapper, or the model itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def backbone(model: nn.Module) -> nn.Module:
    """The pretrained body under the task head (``model.bert``, ``model.model``, ...); a model without a separate
    head is its own backbone."""
    inner = unwrapped(model)
    return getattr(inner, "base_model", inner)


def block_lists(body: nn.Module) -> list[nn.ModuleList]:
    """The outermost ModuleLists of repeated blocks (BERT's encoder.layer, GPT-2's h, T5's encoder and decoder
    blocks), in registration order."""
    found: list[tuple[str, nn.ModuleList]] = []
    for name, module in body.named_modules():
        if (isinstance(module, nn.ModuleList) and not any(name.startswith(outer + ".") for outer, _ in found)
                and any(True for _ in module.parameters())):  # lists inside a block (T5Block.layer) are the block's
            found.append((name, module))
    return [module for _, module in found]


def layer_groups(model: nn.Module) -> list[LayerGroup]:
    """Embeddings, blocks and head of `model`, bottom-up; every parameter of the model is in exactly one group.

    What the backbone holds after a block and before the next (GPT-2's ln_f, BERT's pooler) goes with that block;
    everything outside the backbone (classifier, an untied LM head) is the head.
    Raises: ConfigError when no repeated blocks are found.
    """
    body = backbone(model)
    blocks = [block for blocks in block_lists(body) for block in blocks]
    if not blocks:
        raise ConfigError(f"model: found no Transformer blocks (a ModuleList of layers) in {type(body).__name__}; "
                          "layer-wise strategies need them")
    block_of = {id(p): i for i, block in reversed(list(enumerate(blocks))) for p in block.parameters()}
    count = len(blocks)
    groups = [LayerGroup("embeddings", count + 1), *(LayerGroup(f"layer.{i}", count - i) for i in range(count)),
              LayerGroup("head", 0)]
    seen: set[int] = set()
    current = 0  # before the first block: the embeddings; after a block: that block
    for param in body.parameters():  # registration order: embeddings, blocks, then what follows them
        if id(param) not in seen:
            seen.add(id(param))
            current = 1 + block_of[id(param)] if id(param) in block_of else current
            groups[current].params.append(param)
    groups[-1].params = [p for p in model.parameters() if id(p) not in seen]
    return groups


def head_module_names(model: nn.Module) -> list[str]:
    """Names of the top-level modules that hold only head parameters (e.g. ``classifier``, an untied ``lm_head``),
    as PEFT's ``modules_to_save`` takes them."""
    head = {id(p) for p in layer_groups(model)[-1].params}
    return [name for name, child in unwrapped(model).named_children()
            if (params := list(child.parameters())) and all(id(p) in head for p in params)]


def check_layer_count(model: nn.Module, key: str, layers: int) -> None:
    """ConfigError naming `key` when `layers` is negative or more than the model's Transformer blocks."""
    count = len(layer_groups(model)) - 2
    if not 0 <= layers <= count:
        raise ConfigError(f"{key}: {layers} layers asked for, but the model has {count} Transformer layers "
                          f"(expected 0..{count})")


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters; tied ones (input and output embeddings) count once, as parameters() yields
    them."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
