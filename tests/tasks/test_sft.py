"""CausalSFTModule: the loss counts response tokens only; response metrics, samples, test and predict; the packaged
SmolLM2 fine-tunes and exports for `pipeline`; encoders are refused; the shipped config runs through the CLI."""

import json

import lightning.pytorch as pl
import pytest
import torch.nn.functional as F
from helpers import REPO, assert_pinned, first_losses, logged_values, metrics_rows, write_rows
from lightning.pytorch.loggers import CSVLogger
from transformers import AutoModelForCausalLM, pipeline

from lit_finetune import backbones, commands
from lit_finetune.callbacks import ExportBestModel, PredictionWriter, ResponseSamples
from lit_finetune.data.instructions import IGNORE, InstructionDataModule
from lit_finetune.errors import ConfigError
from lit_finetune.tasks.base import export_checkpoint
from lit_finetune.tasks.sft import CausalSFTModule

CONFIG = REPO / "configs" / "sft" / "smollm2_instructions.yaml"
COLOURS = [("sky", "blue"), ("grass", "green"), ("snow", "white"), ("sun", "yellow")]
PAIRS = [{"id": f"q{i}", "prompt": f"what colour is the {thing} ?", "response": f"it is {colour} ."}
         for i, (thing, colour) in enumerate(COLOURS)]


PINNED = [10.337357, 10.356561, 10.371833, 10.352617]  # first four step losses; see helpers.assert_pinned


def instruction_files(folder, rows=PAIRS, splits=("train", "validation", "predict")) -> dict:
    return {f"{split}_file": str(write_rows(folder / f"{split}.jsonl", rows)) for split in splits}


def trainer(run_dir, *callbacks, **kwargs) -> pl.Trainer:
    settings = dict(default_root_dir=run_dir, accelerator="cpu", logger=CSVLogger(run_dir, name="", version=""),
                    enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                    num_sanity_val_steps=0, log_every_n_steps=1)
    return pl.Trainer(callbacks=list(callbacks), **{**settings, **kwargs})


def test_loss_is_the_mean_over_response_tokens(tmp_path):
    dm = InstructionDataModule("tiny:llama", **instruction_files(tmp_path), batch_size=4, id_column="id")
    module = CausalSFTModule("tiny:llama")
    module.configure_model()
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    logits = module.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    response = (batch["labels"] != IGNORE) & (batch["attention_mask"] == 1)
    targets = batch["input_ids"].masked_fill(~response, IGNORE)  # only response positions count, prompt ones not
    expected = F.cross_entropy(logits[:, :-1].flatten(0, 1), targets[:, 1:].flatten())
    assert module.shared_step(batch, "val").item() == pytest.approx(expected.item(), rel=1e-5)
    assert 0 < int(response.sum()) < int(batch["attention_mask"].sum())


def test_fit_logs_response_metrics_and_samples_then_predicts(tmp_path):
    files = {**instruction_files(tmp_path, splits=("validation", "test", "predict")),
             "train_file": str(write_rows(tmp_path / "many.jsonl", PAIRS * 8))}
    dm = InstructionDataModule("tiny:llama", **files, batch_size=8, id_column="id")
    module = CausalSFTModule("tiny:llama", learning_rate=2e-2, warmup=0, max_new_tokens=4)
    run_dir = tmp_path / "run"
    fit = trainer(run_dir, ResponseSamples(num_prompts=2, max_new_tokens=4), max_epochs=4, check_val_every_n_epoch=2)
    fit.fit(module, datamodule=dm)
    val_loss = logged_values(run_dir, "val/loss")
    assert len(val_loss) == 2 and val_loss[-1] < 0.5 * logged_values(run_dir, "train/loss")[0]
    assert logged_values(run_dir, "val/loss_best") == [val_loss[0], min(val_loss)]
    assert {"val/perplexity", "val/next_token_acc", "train/next_token_acc"} <= set(metrics_rows(run_dir)[0])
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").open()]
    assert [(s["step"], s["prompt"]) for s in samples] == [(step, p["prompt"]) for step in (8, 16) for p in PAIRS[:2]]
    [test] = trainer(tmp_path / "test").test(module, datamodule=dm)  # the validation rows again, same weights
    assert test["test/loss"] == pytest.approx(val_loss[-1], rel=1e-5) and test["test/perplexity"] > 1

    output = tmp_path / "predictions.jsonl"
    trainer(tmp_path / "predict", PredictionWriter(str(output))).predict(module, datamodule=dm)
    rows = [json.loads(line) for line in output.open()]
    assert [(r["id"], r["prompt"]) for r in rows] == [(p["id"], p["prompt"]) for p in PAIRS]
    assert all(set(r) == {"id", "prompt", "response"} and r["response"] for r in rows)


@pytest.mark.parametrize("backbone", ["tiny:bert", "minilm", "tiny:bart"])
def test_encoders_are_refused_before_training(backbone, tmp_path):
    dm = InstructionDataModule(backbone, **instruction_files(tmp_path), batch_size=4)
    with pytest.raises(ConfigError, match=r"model_name_or_path: .* causal language modeling needs a decoder-only"):
        trainer(tmp_path / "run", max_steps=1).fit(CausalSFTModule(backbone), datamodule=dm)


def test_packaged_smollm2_fine_tunes_on_responses_and_exports_for_pipeline(tmp_path):
    """The packaged GGUF is converted once per cache, then loads like any Hugging Face folder."""
    folder = backbones.resolve("smollm2")
    assert folder == backbones.packaged_smollm2_path() and folder != backbones.SMOLLM2_HUB_ID
    rows = [{"prompt": "Name a colour.", "response": "Blue, like the sky."}] * 4
    dm = InstructionDataModule("smollm2", **instruction_files(tmp_path, rows, ("train", "validation")),
                               batch_size=2, max_length=64, system_prompt="Be brief.")  # short: 135M params on CPU
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    prompt_length = int((batch["labels"][0] == IGNORE).sum())
    assert dm.tokenizer.decode(batch["input_ids"][0, :prompt_length]) == (  # SmolLM2's own chat template
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n")
    assert dm.tokenizer.decode(batch["labels"][0, prompt_length:]) == "Blue, like the sky.<|im_end|>\n"

    module = CausalSFTModule("smollm2", learning_rate=1e-4, warmup=0, lr_scheduler="constant_with_warmup")
    run_dir = tmp_path / "run"
    trainer(run_dir, ExportBestModel(), max_steps=2, limit_val_batches=0).fit(module, datamodule=dm)
    losses = logged_values(run_dir, "train/loss")
    assert len(losses) == 2 and losses[1] < losses[0]  # the same batch again, after one update

    export = run_dir / "export"
    model = AutoModelForCausalLM.from_pretrained(export)
    assert model.config.model_type == "llama" and getattr(model.config, "quantization_config", None) is None
    chat = pipeline("text-generation", model=str(export))
    reply = chat([{"role": "user", "content": "Name a colour."}], max_new_tokens=4, do_sample=False)
    assert reply[0]["generated_text"][-1]["role"] == "assistant"  # the exported tokenizer keeps the chat template


def test_shipped_config_trains_through_the_cli(tmp_path):
    """With packed rows: they train, validate, and the samples and export come as from padded ones."""
    run_dir = tmp_path / "run"
    files = instruction_files(tmp_path / "data")
    commands.main(["fit", "--config", str(CONFIG), "--model.init_args.model_name_or_path=tiny:gpt2",  # in-process
                   "--data.init_args.dataset_name=null", "--data.init_args.messages_column=null",
                   *(f"--data.init_args.{key}={path}" for key, path in files.items()), "--data.init_args.id_column=id",
                   f"--trainer.default_root_dir={run_dir}", "--trainer.max_steps=1", "--trainer.accelerator=cpu",
                   "--trainer.val_check_interval=1", "--trainer.enable_progress_bar=false",
                   "--data.init_args.packing=padding_free"])
    assert logged_values(run_dir, "val/loss") and len((run_dir / "samples.jsonl").read_text().splitlines()) == 4
    assert AutoModelForCausalLM.from_pretrained(run_dir / "export").config.model_type == "gpt2"
    [best] = (run_dir / "checkpoints").glob("best-step*.ckpt")
    export_checkpoint(str(best), str(tmp_path / "exported"))  # `lit-finetune export`, in-process
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "exported").config.model_type == "gpt2"


def test_pinned_losses(tmp_path):
    files = instruction_files(tmp_path / "data")
    args = ["--config", str(CONFIG), "--model.init_args.model_name_or_path=tiny:gpt2",
            "--data.init_args.dataset_name=null", "--data.init_args.messages_column=null",
            *(f"--data.init_args.{key}={path}" for key, path in files.items()), "--data.init_args.id_column=id",
            "--data.init_args.batch_size=1"]
    assert_pinned(first_losses(tmp_path / "run", *args), PINNED)
