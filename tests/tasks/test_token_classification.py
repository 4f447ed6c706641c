"""NER through the real CLI (in-process): learning with and without a CRF, entity-level metrics, the CoNLL prediction
file and the export that transformers' pipeline loads; the CRF checked against brute force."""

import itertools

import pytest
import torch
from helpers import assert_pinned, entity_sentences, first_losses, logged_values, metrics_rows, write_conll
from safetensors.torch import load_file
from transformers import pipeline

from lit_finetune.commands.fit import LitFinetuneCLI
from lit_finetune.data.tag_schemes import first_invalid
from lit_finetune.tasks.crf import CRF
from lit_finetune.tasks.token_classification import entity_scores, words_first

CONFIG = "configs/ner/conll2003.yaml"
TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


PINNED = [1.820072, 1.682543, 1.649568, 1.589613]  # first four step losses; see helpers.assert_pinned


@pytest.fixture
def ner_files(tmp_path):
    return {split: write_conll(tmp_path / f"{split}.txt", entity_sentences(n, seed))
            for split, n, seed in (("train", 96, 0), ("validation", 32, 1), ("test", 16, 2))}


def ner_args(files, run_dir, *extra):
    return ["--config", CONFIG, "--data.init_args.dataset_name=null", "--model.init_args.model_name_or_path=tiny:bert",
            "--model.init_args.learning_rate=5e-3", "--model.init_args.warmup=0", "--data.init_args.batch_size=8",
            f"--trainer.default_root_dir={run_dir}", "--trainer.max_epochs=2", "--trainer.accelerator=cpu",
            "--trainer.enable_model_summary=false", "--trainer.enable_progress_bar=false", "--trainer.logger=false",
            *[f"--data.init_args.{split}_file={path}" for split, path in files.items()], *extra]


@pytest.mark.parametrize("use_crf", [False, True])
def test_ner_learns_and_predicts_a_conll_file_and_exports_for_the_pipeline(use_crf, tmp_path, ner_files):
    run_dir = tmp_path / "run"
    args = ner_args(ner_files, run_dir, f"--model.init_args.use_crf={use_crf}", "--trainer.logger=null")
    cli = LitFinetuneCLI(args=["fit", *args])
    loss = logged_values(run_dir, "train/loss_epoch")
    assert loss[-1] < 0.5 * loss[0] and logged_values(run_dir, "val/f1")[-1] > 0.9
    assert {"val/precision", "val/recall", "val/f1_PER", "val/f1_LOC", "val/f1_ORG", "val/f1_best"} <= set(
        metrics_rows(run_dir)[-1])
    assert (cli.model.crf is not None) == use_crf

    LitFinetuneCLI(args=["test", *args, f"--ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"])
    assert logged_values(run_dir, "test/f1")[-1] > 0.9
    LitFinetuneCLI(args=["predict", *args, f"--ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"])
    sentences = (run_dir / "predictions.conll").read_text().strip().split("\n\n")
    gold = entity_sentences(16, 2)
    assert len(sentences) == 16
    predicted = [[line.split("\t") for line in s.splitlines()] for s in sentences]
    assert [[w for w, _ in s] for s in predicted] == [words for words, _ in gold]
    correct = sum(p == g for s, (_, tags) in zip(predicted, gold) for (_, p), g in zip(s, tags))
    assert correct / sum(len(tags) for _, tags in gold) > 0.9

    export = run_dir / "export"
    tagger = pipeline("token-classification", model=str(export), aggregation_strategy="simple")
    entities = tagger("yesterday john met mary smith in new york")
    assert [(e["entity_group"], e["word"]) for e in entities] == [("PER", "john"), ("PER", "mary smith"),
                                                                   ("LOC", "new york")]
    assert (export / "crf.safetensors").is_file() == use_crf
    if use_crf:
        assert set(load_file(export / "crf.safetensors")) == {"start", "end", "transitions"}


def test_crf_likelihood_and_viterbi_match_brute_force():
    torch.manual_seed(0)
    crf = CRF(TAGS, "IOB2")
    with torch.no_grad():
        for p in crf.parameters():
            p.normal_()
    emissions = torch.randn(2, 4, len(TAGS))
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]], dtype=torch.bool)
    decoded = crf.decode(emissions, mask)
    for i, length in enumerate((4, 3)):
        paths = [p for p in itertools.product(range(len(TAGS)), repeat=length)
                 if first_invalid([TAGS[t] for t in p], "IOB2") is None]
        tags = torch.tensor([list(p) + [0] * (4 - length) for p in paths])
        logp = crf.log_likelihood(emissions[i:i + 1].expand(len(paths), -1, -1), tags,
                                  mask[i:i + 1].expand(len(paths), -1))
        assert float(logp.detach().exp().sum()) == pytest.approx(1.0, abs=1e-5)  # all mass on allowed paths
        assert tuple(decoded[i]) == paths[int(logp.argmax())]


def test_crf_decoding_never_breaks_the_scheme_where_argmax_does():
    crf = CRF(TAGS, "IOB2")
    emissions = torch.full((1, 3, len(TAGS)), -5.0)
    emissions[0, 0, 0] = emissions[0, 1, TAGS.index("I-PER")] = emissions[0, 2, TAGS.index("I-LOC")] = 5.0
    argmax = [TAGS[i] for i in emissions[0].argmax(-1).tolist()]
    assert first_invalid(argmax, "IOB2") == 1
    best = [TAGS[i] for i in crf.decode(emissions, torch.ones(1, 3, dtype=torch.bool))[0]]
    assert first_invalid(best, "IOB2") is None


def test_words_first_gathers_word_starts_in_order():
    values = torch.arange(10).view(2, 5)
    starts = torch.tensor([[0, 1, 0, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    picked, mask = words_first(values, starts)
    assert picked[0].tolist() == [1, 3, 4] and picked[1, 0] == 5
    assert mask.tolist() == [[True, True, True], [True, False, False]]


def test_entity_scores_conlleval_and_strict():
    gold = [["B-PER", "I-PER", "O", "B-LOC"]]
    predicted = [["I-PER", "I-PER", "O", "B-ORG"]]  # the person found but opened with I-; the place mistyped
    default = entity_scores(gold, predicted, "IOB2", strict=False)
    strict = entity_scores(gold, predicted, "IOB2", strict=True)
    assert default["f1"] == pytest.approx(0.5) and default["f1_PER"] == 1.0 and default["f1_LOC"] == 0.0
    assert strict["f1"] == 0.0  # strict IOB2: an entity must open with B-


@pytest.mark.parametrize("extra", [(), ("--model.init_args.loss=focal", "--model.init_args.focal_gamma=0")],
                         ids=["cross_entropy", "focal_gamma0"])
def test_pinned_losses(tmp_path, ner_files, extra):
    """The focal path with gamma 0 is the per-token cross-entropy, to the pinned digits."""
    assert_pinned(first_losses(tmp_path / "run", *ner_args(ner_files, tmp_path / "unused", *extra)), PINNED)
