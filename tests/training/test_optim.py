"""Weight decay decided by parameter name, as the Hugging Face Trainer decides it (so it also holds where FSDP has
flattened the parameters and their shapes say nothing)."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, Trainer

from lit_finetune.backbones import load_model
from lit_finetune.training.optim import param_groups


@pytest.mark.parametrize("name, auto_class", [("tiny:bert", AutoModelForSequenceClassification),
                                              ("tiny:llama", AutoModelForCausalLM),
                                              ("tiny:gpt2", AutoModelForCausalLM)])
@pytest.mark.parametrize("layer_lr_decay", [1.0, 0.8])
def test_decay_groups_are_the_hugging_face_trainers(name, auto_class, layer_lr_decay):
    model = load_model(name, auto_class, False, pretrained=False, **({"num_labels": 2} if "bert" in name else {}))
    groups = param_groups(model, 0.01, 1e-3, layer_lr_decay, model)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for g in groups if g["weight_decay"] for p in g["params"]}
    not_decayed = {names[id(p)] for g in groups if not g["weight_decay"] for p in g["params"]}
    # (the Trainer's list also names a tied weight under its second name, lm_head.weight)
    assert decayed == set(Trainer.get_decay_parameter_names(None, model)) & set(names.values())
    assert decayed | not_decayed == set(names.values()) and not decayed & not_decayed
    norms = {n for n in names.values() if "norm" in n.lower() or n.startswith(("ln_", "transformer.ln_"))
             or ".ln_" in n}
    assert norms and norms <= not_decayed  # RMSNorm (Llama) and LayerNorm (BERT, GPT-2) weights
    assert all(g["weight_decay"] == 0.01 for g in groups if g["name"].endswith("/decay") or g["name"] == "decay")


def test_no_decay_for_a_one_dimensional_weight_that_is_not_a_norm_or_bias_is_not_assumed():
    """A 1-d weight that is neither a bias nor a normalization (e.g. a learned scale) is decayed, as in the HF
    Trainer; only the rule by number of dimensions left it out."""
    model = torch.nn.Module()
    model.scale = torch.nn.Parameter(torch.ones(4))
    model.proj = torch.nn.Linear(4, 4)
    decay, no_decay = param_groups(model, 0.1)
    assert decay["params"][0] is model.scale and len(decay["params"]) == 2
    assert no_decay["params"] == [model.proj.bias]
