"""`lit-finetune deploy`: shrink and export a fine-tuned classifier for CPU serving (dynamic int8, ONNX), and measure
what each costs in accuracy and gains in latency and size on a labelled file, against the fp32 model."""

from __future__ import annotations

import importlib.util
import inspect
import itertools
import json
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import transformers
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from lit_finetune import heads  # noqa: F401  (registers the pooled classification head with the Auto classes)
from lit_finetune.data import readers
from lit_finetune.errors import ConfigError, DataError
from lit_finetune.io import atomic_directory

INT8_WEIGHTS = "model_int8.pt"
WARMUP_CALLS = 3
# Above protobuf's 2 GiB limit an ONNX model must keep its weights in a side file (model.onnx.data).
ONNX_SINGLE_FILE_LIMIT = 2**31 - 2**26
VARIANTS = {"fp32": "fp32 (PyTorch)", "int8_dynamic": "int8 dynamic (PyTorch)", "onnx_fp32": "fp32 (ONNX Runtime)"}

Batch = dict[str, torch.Tensor]


def import_onnxruntime():
    """onnxruntime, checking first that the whole optional `deploy` extra (the exporter needs onnx and onnxscript)
    is there, so a missing package fails before minutes of measuring."""
    missing = [name for name in ("onnx", "onnxruntime", "onnxscript") if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(f"deploy needs onnx, onnxruntime and onnxscript ({', '.join(missing)} missing): "
                          "pip install 'lit-finetune[deploy]'")
    import onnxruntime

    return onnxruntime


def load_classifier(model_dir: str):
    """The exported model (in eval mode) and its tokenizer, refusing folders that are not a classifier's export:
    AutoModelForSequenceClassification would otherwise put a random head on a pretraining export without failing."""
    folder = Path(model_dir).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"--model_dir: folder {folder} does not exist; expected the export/ folder of a "
                          "classification run")
    for marker in ("config.json", "tokenizer_config.json"):
        if not (folder / marker).is_file():
            raise ConfigError(f"--model_dir: {folder} has no {marker}; expected a Hugging Face folder with model and "
                              "tokenizer (the export/ folder of a classification run)")
    config = AutoConfig.from_pretrained(folder)
    architectures = config.architectures or []
    if not any(name.endswith("ForSequenceClassification") for name in architectures):
        raise ConfigError(f"--model_dir: {folder} holds {architectures or 'no architecture'}; expected a sequence "
                          "classification export (*ForSequenceClassification)")
    if config.num_labels < 2 or config.problem_type == "regression":
        raise ConfigError(f"--model_dir: {folder} is a regression model (num_labels={config.num_labels}); deploy "
                          "measures classification accuracy")
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    return model, AutoTokenizer.from_pretrained(folder)


def read_eval_file(eval_file: str, text_column: str, text_pair_column: str | None, label_column: str,
                   config) -> tuple[list[str], list[str] | None, torch.Tensor]:
    """Texts, optional pair texts and class ids of a labelled file; labels are the model's label names, or ints
    taken as class ids."""
    ds = readers.read_file(eval_file, "--eval_file")
    key_of = {text_column: "--text_column", label_column: "--label_column"}
    text_columns = [text_column] + ([text_pair_column] if text_pair_column else [])
    if text_pair_column:
        key_of[text_pair_column] = "--text_pair_column"
    readers.require_columns(ds, text_columns + [label_column], str(eval_file), key_of)
    if len(ds) == 0:
        raise DataError(f"--eval_file: {eval_file} has no rows")
    for name in text_columns:
        readers.require_text(ds, name, str(eval_file))
    label2id = {str(name): int(i) for name, i in config.label2id.items()}
    ids = []
    for row, value in enumerate(readers.column(ds, label_column).to_pylist()):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < config.num_labels:
            ids.append(value)
        elif isinstance(value, str) and value in label2id:
            ids.append(label2id[value])
        else:
            raise DataError(f"{readers.row_location(str(eval_file), row)}: column {label_column!r} is {value!r}, "
                            f"which is not a label of the model; known labels are {list(label2id)} (or their ids "
                            f"0..{config.num_labels - 1})")
    pairs = [str(t) for t in readers.column(ds, text_pair_column).to_pylist()] if text_pair_column else None
    return [str(t) for t in readers.column(ds, text_column).to_pylist()], pairs, torch.tensor(ids)


def tokenize(tokenizer, input_names: list[str], texts: list[str], pairs: list[str] | None, max_length: int,
             batch_size: int) -> list[Batch]:
    """Batches padded to their own longest example, holding only the inputs the model's forward takes, in its
    argument order (the order the ONNX graph's inputs are named in)."""
    batches = []
    for start in range(0, len(texts), batch_size):
        stop = start + batch_size
        encoding = tokenizer(texts[start:stop], pairs[start:stop] if pairs else None, truncation=True,
                             max_length=max_length, padding=True, return_tensors="pt")
        batches.append({name: encoding[name] for name in input_names if name in encoding})
    return batches


def evaluate(run: Callable[[Batch], torch.Tensor], batches: list[Batch], labels: torch.Tensor,
             singles: list[Batch], latency_batches: int) -> tuple[dict, torch.Tensor]:
    """Accuracy over every batch, then median latency (ms) of `latency_batches` batches and of as many single
    examples, each after a few warm-up calls; returns the measures and the logits."""
    logits = torch.cat([run(batch) for batch in batches])
    measures = {"accuracy": (logits.argmax(-1) == labels).float().mean().item()}
    for key, inputs in (("ms_per_batch", batches), ("ms_per_example", singles)):
        calls = list(itertools.islice(itertools.cycle(inputs), WARMUP_CALLS + latency_batches))
        times = []
        for batch in calls:
            start = time.perf_counter()
            run(batch)
            times.append(1000 * (time.perf_counter() - start))
        measures[key] = statistics.median(times[WARMUP_CALLS:])
    return measures, logits


def torch_runner(model) -> Callable[[Batch], torch.Tensor]:
    def run(batch: Batch) -> torch.Tensor:
        with torch.inference_mode():
            return model(**batch).logits.float()
    return run


def onnx_runner(session) -> Callable[[Batch], torch.Tensor]:
    names = [i.name for i in session.get_inputs()]  # the exporter may drop an input the graph never reads

    def run(batch: Batch) -> torch.Tensor:
        return torch.from_numpy(session.run(["logits"], {name: batch[name].numpy() for name in names})[0])
    return run


def quantize(model):
    """A copy of the model with every nn.Linear in dynamic int8 (weights int8, activations quantized per call);
    embeddings and LayerNorms stay fp32."""
    with warnings.catch_warnings():
        # torch.ao prints a "deprecated, moving to torchao" notice on every call; the API still works (torch 2.13).
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", "torch.quantize_per_tensor", UserWarning)
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def save_quantized(quantized, tokenizer, folder: Path) -> None:
    """The int8 model as config + tokenizer + state dict: torch.save of the module itself would pickle classes, and
    torch.jit is deprecated; `load_quantized` rebuilds the module and loads the state dict."""
    folder.mkdir()
    quantized.config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    torch.save(quantized.state_dict(), folder / INT8_WEIGHTS)


def load_quantized(int8_dir: str | Path):
    """Reload an `int8/` folder written by `deploy`: the architecture from its config, quantized the same way, then
    the saved int8 weights."""
    folder = Path(int8_dir)
    model = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(folder)).eval()
    quantized = quantize(model)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "TypedStorage is deprecated", UserWarning)  # raised inside torch.load
        quantized.load_state_dict(torch.load(folder / INT8_WEIGHTS, weights_only=True))
    return quantized


def export_onnx(model, sample: Batch, path: Path, single_file: bool) -> None:
    """fp32 ONNX graph with batch and sequence axes dynamic and a `logits` output. Inputs are passed and named in
    forward()'s argument order: with the tokenizer's order (input_ids, token_type_ids, attention_mask) the exporter
    labels BERT's attention_mask as token_type_ids, which only the comparison with PyTorch reveals."""
    if len(next(iter(sample.values()))) < 2:  # torch.export specializes a dimension of size 1 to a constant
        sample = {name: value.repeat(2, 1) for name, value in sample.items()}
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    with warnings.catch_warnings():
        # Noise the user cannot act on: sharing one Dim across inputs is how torch.export says their sizes are equal,
        # yet the exporter warns about it; and torch's own pytree code trips its LeafSpec deprecation.
        warnings.filterwarnings("ignore", "# The axis name", UserWarning)
        warnings.filterwarnings("ignore", r"`isinstance\(treespec, LeafSpec\)`", FutureWarning)
        torch.onnx.export(model, (), str(path), kwargs=sample, input_names=list(sample), output_names=["logits"],
                          dynamic_shapes={name: {0: batch, 1: sequence} for name in sample}, dynamo=True,
                          external_data=not single_file, verbose=False)


def file_bytes(*paths: Path) -> int:
    return sum(p.stat().st_size for p in paths if p.is_file())


def markdown_table(report: dict) -> str:
    lines = ["| model | accuracy | Δ accuracy | ms / batch | ms / example | file MB |", "|---|---|---|---|---|---|"]
    for key, title in VARIANTS.items():
        v = report["variants"][key]
        lines.append(f"| {title} | {v['accuracy']:.4f} | {v['delta_accuracy']:+.4f} | {v['ms_per_batch']:.2f} | "
                     f"{v['ms_per_example']:.2f} | {v['file_bytes'] / 1e6:.1f} |")
    return "\n".join(lines)


def write_report(report: dict, folder: Path) -> None:
    (folder / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (folder / "report.md").write_text(
        f"# Deployment report: {report['model_dir']}\n\n"
        f"{report['examples']} examples of {report['eval_file']}; batches of {report['batch_size']} "
        f"(max_length {report['max_length']}), latency as the median of {report['latency_batches']} calls after "
        f"{WARMUP_CALLS} warm-up calls, {report['threads']} thread(s); torch {report['versions']['torch']}, "
        f"onnxruntime {report['versions']['onnxruntime']}.\n\n"
        f"{markdown_table(report)}\n\n"
        f"ONNX vs PyTorch fp32: max |Δ logits| = {report['onnx_max_abs_diff']:.2e} "
        f"(tolerance {report['onnx_tolerance']:g}).\n\n"
        "Artifacts: `int8/` (reload with `lit_finetune.commands.deploy.load_quantized`), `model.onnx` (inputs "
        f"{', '.join(report['onnx_inputs'])}; output logits; its tokenizer is the one in `int8/`).\n")


def deploy(
    model_dir: str,
    eval_file: str,
    text_column: str = "text",
    text_pair_column: str | None = None,
    label_column: str = "label",
    output_dir: str | None = None,
    max_length: int = 128,
    batch_size: int = 32,
    latency_batches: int = 20,
    threads: int | None = None,
    onnx_tolerance: float = 1e-3,
) -> dict:
    """Quantize an exported classifier to dynamic int8 and export it to ONNX, measuring each against the fp32 model.

    Features: accuracy and its change vs fp32, latency (median ms per batch and per single example) and weights file
    size for fp32, int8 dynamic (PyTorch) and fp32 ONNX (onnxruntime); the ONNX logits are checked against PyTorch's
    on every example. Writes report.json, report.md, int8/ and model.onnx into output_dir (replaced only once all is
    written) and returns the report.

    Raises:
        ConfigError: model_dir is missing or not a classification export; the deploy extra is not installed; the
            ONNX logits differ from PyTorch's by more than onnx_tolerance (nothing is written then).
        DataError: the eval file is missing, lacks a column, has empty text, or a label the model does not know.

    Args:
        model_dir: Exported classifier: the export/ folder of a classification run (model, labels and tokenizer).
        eval_file: Labelled file to measure on: csv, tsv, json, jsonl or parquet.
        text_column: Column holding the text (the first sentence for pair tasks).
        text_pair_column: Column holding the second sentence, for pair tasks.
        label_column: Column holding the label: one of the model's label names, or a class id.
        output_dir: Folder to write; default: deploy/ beside model_dir (the run folder).
        max_length: Longest tokenized input; longer ones are truncated.
        batch_size: Examples per batch, for accuracy and the per-batch latency.
        latency_batches: Timed calls per latency measure (batches, and as many single examples).
        threads: CPU threads for PyTorch and onnxruntime; their defaults when unset.
        onnx_tolerance: Largest max |ONNX - PyTorch| logit difference accepted.
    """
    for key, value in (("batch_size", batch_size), ("latency_batches", latency_batches), ("max_length", max_length)):
        if value < 1:
            raise ConfigError(f"--{key}: got {value}; expected a positive number")
    onnxruntime = import_onnxruntime()
    model, tokenizer = load_classifier(model_dir)
    texts, pairs, labels = read_eval_file(eval_file, text_column, text_pair_column, label_column, model.config)
    input_names = list(inspect.signature(model.forward).parameters)
    batches = tokenize(tokenizer, input_names, texts, pairs, max_length, batch_size)
    singles = tokenize(tokenizer, input_names, texts[:latency_batches], pairs[:latency_batches] if pairs else None,
                       max_length, 1)
    out = Path(output_dir) if output_dir else Path(model_dir).expanduser().resolve().parent / "deploy"
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        with atomic_directory(out) as tmp:
            fp32, fp32_logits = evaluate(torch_runner(model), batches, labels, singles, latency_batches)
            folder = Path(model_dir).expanduser()  # weights may be sharded (model-00001-of-00002.safetensors)
            fp32["file_bytes"] = file_bytes(*(sorted(folder.glob("*.safetensors")) or folder.glob("*.bin")))

            quantized = quantize(model)
            save_quantized(quantized, tokenizer, tmp / "int8")
            int8, _ = evaluate(torch_runner(quantized), batches, labels, singles, latency_batches)
            int8["file_bytes"] = file_bytes(tmp / "int8" / INT8_WEIGHTS)

            onnx_path = tmp / "model.onnx"
            export_onnx(model, batches[0], onnx_path, single_file=fp32["file_bytes"] < ONNX_SINGLE_FILE_LIMIT)
            options = onnxruntime.SessionOptions()
            if threads:
                options.intra_op_num_threads = threads
            session = onnxruntime.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
            onnx, onnx_logits = evaluate(onnx_runner(session), batches, labels, singles, latency_batches)
            onnx["file_bytes"] = file_bytes(onnx_path, tmp / "model.onnx.data")
            max_diff = (onnx_logits - fp32_logits).abs().max().item()
            print(f"ONNX vs PyTorch fp32: max |logits difference| = {max_diff:.2e} over {len(labels)} examples "
                  f"(tolerance {onnx_tolerance:g})", flush=True)
            if not max_diff <= onnx_tolerance:  # (also catches NaN)
                raise ConfigError(f"--onnx_tolerance: the ONNX export's logits differ from PyTorch's by up to "
                                  f"{max_diff:.2e} on {eval_file}, more than {onnx_tolerance:g}; nothing was written "
                                  f"to {out}")

            variants = {"fp32": fp32, "int8_dynamic": int8, "onnx_fp32": onnx}
            for measures in variants.values():
                measures["delta_accuracy"] = measures["accuracy"] - fp32["accuracy"]
            report = {"model_dir": str(model_dir), "eval_file": str(eval_file), "examples": len(labels),
                      "batch_size": batch_size, "max_length": max_length, "latency_batches": latency_batches,
                      "threads": torch.get_num_threads(), "onnx_max_abs_diff": max_diff,
                      "onnx_tolerance": onnx_tolerance, "onnx_inputs": [i.name for i in session.get_inputs()],
                      "variants": variants, "output_dir": str(out),
                      "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                                   "onnxruntime": onnxruntime.__version__}}
            write_report(report, tmp)
    finally:
        torch.set_num_threads(previous_threads)
    print(f"\n{markdown_table(report)}\n\nONNX vs PyTorch fp32 max |Δ logits|: {max_diff:.2e}\nReport, int8/ and "
          f"model.onnx written to {out}", flush=True)
    return report
