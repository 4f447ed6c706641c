"""FSDP2 (configs/strategies/fsdp2.yaml) on two CPU processes (gloo), through the real CLI, against DDP
(configs/strategies/ddp.yaml) on the same seed: the model is sharded, trains to what DDP trains, and its export
holds the weights that were in memory at the end."""

import json

import pytest
import torch
from helpers import REPO, one_line_error, run_cli, tiny_args
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from lit_finetune import commands
from lit_finetune.backbones import load_model
from lit_finetune.training.sharding import FSDPBlocksStrategy, block_classes

STRATEGIES = REPO / "configs" / "strategies"
PROBE_ENV = {"PYTHONPATH": str(REPO / "tests"), "WANDB_MODE": "disabled"}  # tests/probes.py, importable there
TEXTS = ["a good good film", "bad", "good but bad"]


def fit_on_two_processes(strategy: str, data, run_dir, probe, *extra: str):
    run_cli("fit", *tiny_args(data, run_dir, "--config", str(STRATEGIES / f"{strategy}.yaml"), *extra,
                              "--trainer.devices=2", "--data.init_args.test_file=null",
                              "--trainer.logger=lit_finetune.training.loggers.RunCSVLogger",
                              "--trainer.enable_progress_bar=false", "--trainer.callbacks+=probes.LogitsAtEnd",
                              f"--trainer.callbacks.texts={json.dumps(TEXTS)}",
                              f"--trainer.callbacks.output_dir={probe}"), env=PROBE_ENV)
    return [json.loads((probe / f"rank-{rank}.json").read_text()) for rank in (0, 1)]


def exported_logits(folder) -> torch.Tensor:
    model, tokenizer = AutoModelForSequenceClassification.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        return model(**tokenizer(TEXTS, padding=True, return_tensors="pt")).logits


@pytest.mark.xdist_group("two_processes")
def test_fsdp2_shards_trains_like_ddp_and_exports_the_weights_in_memory(tmp_path, tiny_data):
    fsdp2 = fit_on_two_processes("fsdp2", tiny_data, tmp_path / "fsdp2", tmp_path / "fsdp2-probe")
    ddp = fit_on_two_processes("ddp", tiny_data, tmp_path / "ddp", tmp_path / "ddp-probe")

    # Each FSDP2 process holds half of the model's values (DDP: all of them) and both ran every step.
    assert [round(r["held"] / r["total"], 1) for r in fsdp2] == [0.5, 0.5]
    assert [r["held"] == r["total"] for r in ddp] == [True, True]
    assert fsdp2[0]["step"] == ddp[0]["step"] == 8  # 2 epochs of 64 rows, 8 per batch, on 2 processes
    # The same seed trains to the same model: gradients are averaged over both processes' batches either way.
    assert torch.allclose(torch.tensor(fsdp2[0]["logits"]), torch.tensor(ddp[0]["logits"]), atol=1e-4)
    assert fsdp2[0]["logits"] == fsdp2[1]["logits"]

    # last.ckpt holds the full weights: its export computes the logits of the model in memory at the end.
    last = tmp_path / "fsdp2" / "checkpoints" / "last.ckpt"
    assert last.is_file()
    commands.main(["export", "--ckpt_path", str(last), "--output_dir", str(tmp_path / "exported")])
    assert torch.allclose(exported_logits(tmp_path / "exported"), torch.tensor(fsdp2[0]["logits"]), atol=1e-5)
    assert (tmp_path / "fsdp2" / "export" / "config.json").is_file()  # the end-of-fit export of the best checkpoint


@pytest.mark.xdist_group("two_processes")
def test_fsdp2_sharded_checkpoint_folder_exports_the_weights_in_memory(tmp_path, tiny_data, capsys):
    """With save_distributed_checkpoint each process writes its own shards into a last.ckpt folder; `export` (and
    the end-of-fit export) consolidate them in one process into the Hugging Face folder a single-file run writes."""
    fsdp2 = fit_on_two_processes("fsdp2", tiny_data, tmp_path / "run", tmp_path / "probe",
                                 "--trainer.strategy.init_args.save_distributed_checkpoint=true")
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert last.is_dir() and (last / "meta.pt").is_file() and len(list(last.glob("*.distcp"))) == 2
    assert not list(last.parent.glob(".*"))  # no staging folder left behind
    commands.main(["export", "--ckpt_path", str(last), "--output_dir", str(tmp_path / "exported")])
    assert torch.allclose(exported_logits(tmp_path / "exported"), torch.tensor(fsdp2[0]["logits"]), atol=1e-5)
    [best] = (tmp_path / "run" / "checkpoints").glob("best-*")
    assert best.is_dir() and (tmp_path / "run" / "export" / "config.json").is_file()
    exported_logits(tmp_path / "run" / "export")  # the end-of-fit export, from the best folder, loads
    # Another number of processes is refused before anything trains, with the way out.
    line = one_line_error(capsys, ["fit", *tiny_args(tiny_data, tmp_path / "one", "--config",
                                                     str(STRATEGIES / "fsdp2.yaml"), "--trainer.devices=1",
                                                     "--trainer.logger=false", "--resume_changes=allow"), "--ckpt_path",
                                   str(last)])
    assert "holds the shards of 2 processes, and this run has 1" in line
    assert not (tmp_path / "one" / "checkpoints").exists()


def test_fsdp_wraps_the_block_class_found_in_each_model():
    """configs/strategies/fsdp.yaml names no architecture: each model's block class is found in it."""
    found = {preset: {cls.__name__ for cls in block_classes(load_model(preset, AutoModelForCausalLM))}
             for preset in ("tiny:bert", "tiny:gpt2", "tiny:llama")}
    assert found == {"tiny:bert": {"BertLayer"}, "tiny:gpt2": {"GPT2Block"}, "tiny:llama": {"LlamaDecoderLayer"}}
    strategy = FSDPBlocksStrategy(activation_checkpointing=True, state_dict_type="sharded")
    assert strategy.kwargs["use_orig_params"] and strategy._state_dict_type == "sharded"
