"""`lit-finetune deploy`: a tiny exported classifier quantized to int8 and exported to ONNX, each measured on a small
labelled file through the command's entry point; then the inputs users get wrong, in-process."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import onnxruntime
import pytest
import torch
from helpers import sentiment_rows, write_rows
from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification, AutoTokenizer

from lit_finetune import backbones, commands
from lit_finetune.commands.deploy import deploy, load_quantized, quantize, read_eval_file
from lit_finetune.errors import ConfigError, DataError

pytestmark = pytest.mark.xdist_group("deploy")  # its module-scoped fixture is built once, on one worker
LABELS = ("bad", "good")


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    """A random tiny:bert classifier saved the way `fit` exports one: model with id2label, and tokenizer."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("run") / "export"
    model = backbones.load_model("tiny:bert", AutoModelForSequenceClassification, num_labels=2,
                                 id2label=dict(enumerate(LABELS)), label2id={name: i for i, name in enumerate(LABELS)})
    model.save_pretrained(folder)
    backbones.load_tokenizer("tiny:bert").save_pretrained(folder)
    return folder


def predict_one_by_one(export: Path, rows: list[dict]) -> list[int]:
    """The fp32 model's class for each row on its own (no batch, no padding): the reference deploy must agree with."""
    model = AutoModelForSequenceClassification.from_pretrained(export).eval()
    tokenizer = AutoTokenizer.from_pretrained(export)
    with torch.inference_mode():
        return [model(**tokenizer(r["text"], r["aspect"], return_tensors="pt")).logits.argmax(-1).item() for r in rows]


@pytest.fixture(scope="module")
def eval_rows(export) -> list[dict]:
    """36 sentence pairs labelled with the model's own answer except every 4th, flipped: the fp32 accuracy must be
    exactly 0.75, which neither a constant prediction nor a batching/padding mistake would give."""
    rows = [{**row, "aspect": "the acting"} for row in sentiment_rows(36, seed=5, prefix="dev")]
    for i, (row, predicted) in enumerate(zip(rows, predict_one_by_one(export, rows))):
        row["label"] = LABELS[predicted if i % 4 else 1 - predicted]
    return rows


@pytest.fixture(scope="module")
def deployed(export, eval_rows, tmp_path_factory) -> tuple[dict, Path, str]:
    """One `lit-finetune deploy` through the command's entry point (in this process), into its default folder
    (deploy/ beside export/); the other tests read what it wrote. (One run: the ONNX export costs seconds.)"""
    eval_file = write_rows(tmp_path_factory.mktemp("data") / "dev.tsv", eval_rows)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        commands.main(["deploy", f"--model_dir={export}", f"--eval_file={eval_file}", "--text_pair_column=aspect",
                       "--batch_size=8", "--latency_batches=3", "--threads=1"])
    out = export.parent / "deploy"
    return json.loads((out / "report.json").read_text()), out, printed.getvalue()


def test_report_measures_fp32_int8_and_onnx(deployed, eval_rows, export):
    report, out, stdout = deployed
    assert set(report["variants"]) == {"fp32", "int8_dynamic", "onnx_fp32"}
    fp32, int8, onnx = (report["variants"][k] for k in ("fp32", "int8_dynamic", "onnx_fp32"))
    assert fp32["accuracy"] == 0.75 and fp32["delta_accuracy"] == 0
    assert abs(int8["accuracy"] - 0.75) <= 0.1 and int8["delta_accuracy"] == int8["accuracy"] - 0.75
    assert onnx["accuracy"] == 0.75  # same argmax as PyTorch on every example
    assert report["onnx_max_abs_diff"] < report["onnx_tolerance"] == 1e-3
    assert report["examples"] == len(eval_rows) and report["batch_size"] == 8 and report["threads"] == 1
    for v in (fp32, int8, onnx):
        assert v["ms_per_batch"] > 0 and v["ms_per_example"] > 0 and v["file_bytes"] > 1e6
    assert fp32["file_bytes"] == (export / "model.safetensors").stat().st_size
    assert int8["file_bytes"] == (out / "int8" / "model_int8.pt").stat().st_size < fp32["file_bytes"]
    assert sorted(p.name for p in out.iterdir()) == ["int8", "model.onnx", "report.json", "report.md"]
    table = "| fp32 (PyTorch) | 0.7500 | +0.0000 |"
    assert table in stdout and table in (out / "report.md").read_text()
    assert f"max |logits difference| = {report['onnx_max_abs_diff']:.2e} over 36 examples" in stdout


def test_int8_folder_reloads_as_the_quantized_model(deployed, export, eval_rows):
    _, out, _ = deployed
    reloaded = load_quantized(out / "int8")
    fp32 = AutoModelForSequenceClassification.from_pretrained(export).eval()
    in_memory = quantize(fp32)
    tokenizer = AutoTokenizer.from_pretrained(out / "int8")
    batch = tokenizer([r["text"] for r in eval_rows[:8]], padding=True, return_tensors="pt")
    with torch.inference_mode():
        assert torch.equal(reloaded(**batch).logits, in_memory(**batch).logits)
    assert reloaded.config.id2label == {0: "bad", 1: "good"}
    linears = [m for m in fp32.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == len([m for m in reloaded.modules() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)])


def test_onnx_model_serves_any_batch_and_length(deployed, export):
    report, out, _ = deployed
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == report["onnx_inputs"] == \
        ["input_ids", "attention_mask", "token_type_ids"]
    model = AutoModelForSequenceClassification.from_pretrained(export).eval()
    tokenizer = AutoTokenizer.from_pretrained(export)
    batch = tokenizer(["good", "a much longer sentence than any of the export's sample batch had, " * 3, "bad"],
                      padding=True, return_tensors="pt")
    logits = session.run(["logits"], {name: batch[name].numpy() for name in report["onnx_inputs"]})[0]
    with torch.inference_mode():
        assert (torch.from_numpy(logits) - model(**batch).logits).abs().max() < 1e-4


def test_labels_are_the_models_names_or_class_ids(export, tmp_path):
    config = AutoModelForSequenceClassification.from_pretrained(export).config
    names = write_rows(tmp_path / "names.jsonl", [{"text": "a", "label": "good"}, {"text": "b", "label": "bad"}])
    ids = write_rows(tmp_path / "ids.csv", [{"text": "a", "label": 1}, {"text": "b", "label": 0}])
    for eval_file in (names, ids):
        texts, pairs, labels = read_eval_file(str(eval_file), "text", None, "label", config)
        assert texts == ["a", "b"] and pairs is None and labels.tolist() == [1, 0]


def test_unknown_label_names_file_row_and_known_labels(export, tmp_path):
    rows = [{"text": "fine", "label": "good"}, {"text": "so so", "label": "meh"}]
    eval_file = write_rows(tmp_path / "dev.csv", rows)
    with pytest.raises(DataError, match=r"dev.csv, row 2 \(line 3\): column 'label' is 'meh', which is not a label of "
                                        r"the model; known labels are \['bad', 'good'\] \(or their ids 0..1\)"):
        deploy(str(export), str(eval_file), output_dir=str(tmp_path / "out"))
    ids = write_rows(tmp_path / "ids.csv", [{"text": "fine", "label": 1}, {"text": "so so", "label": 2}])
    with pytest.raises(DataError, match=r"row 2 \(line 3\): column 'label' is 2, which is not a label"):
        deploy(str(export), str(ids), output_dir=str(tmp_path / "out"))  # ints are class ids: this model has 0, 1
    assert not (tmp_path / "out").exists()


def test_missing_column_lists_the_columns(export, tmp_path):
    eval_file = write_rows(tmp_path / "dev.tsv", [{"sentence": "fine", "label": "good"}])
    with pytest.raises(DataError, match=r"dev.tsv: no column 'text' \(set by --text_column\); the columns are "
                                        r"\['sentence', 'label'\]"):
        deploy(str(export), str(eval_file))


def test_model_dir_must_be_a_classification_export(tmp_path):
    eval_file = write_rows(tmp_path / "dev.csv", [{"text": "fine", "label": "good"}])
    with pytest.raises(ConfigError, match=r"--model_dir: folder .*nope does not exist"):
        deploy(str(tmp_path / "nope"), str(eval_file))
    backbones.load_model("tiny:bert", AutoModelForMaskedLM).save_pretrained(tmp_path / "mlm")
    backbones.load_tokenizer("tiny:bert").save_pretrained(tmp_path / "mlm")
    with pytest.raises(ConfigError, match=r"holds \['BertForMaskedLM'\]; expected a sequence classification export"):
        deploy(str(tmp_path / "mlm"), str(eval_file))


def test_onnx_beyond_tolerance_fails_and_keeps_the_earlier_output(deployed, export, tmp_path):
    _, out, _ = deployed
    earlier = (out / "report.json").read_text()
    eval_file = write_rows(tmp_path / "dev.csv", [{"text": "fine", "label": "good"}, {"text": "awful", "label": "bad"}])
    with pytest.raises(ConfigError, match=r"--onnx_tolerance: the ONNX export's logits differ from PyTorch's by up to "
                                          r"\S+ on .*dev.csv, more than 1e-12; nothing was written"):
        deploy(str(export), str(eval_file), latency_batches=1, onnx_tolerance=1e-12)  # into the default deploy/
    assert (out / "report.json").read_text() == earlier and sorted(p.name for p in out.parent.iterdir()) == \
        ["deploy", "export"]
