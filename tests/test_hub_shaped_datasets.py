"""The hub datasets the NER, multiple-choice and SFT configs name (eriktks/conll2003, allenai/swag,
HuggingFaceH4/no_robots) cannot be downloaded here. Each config runs instead on a local dataset folder with the hub
dataset's splits, columns and features (ClassLabel tag names, -1 test labels, chat `messages`), passed as
`dataset_name`: the same `load_dataset` path, so the configs' column settings are checked against the real schema."""

import datasets
from helpers import REPO, logged_values

from lit_finetune.commands.fit import LitFinetuneCLI

CONLL_TAGS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]  # eriktks/conll2003
SHORT = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
         "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
         "--trainer.logger=lit_finetune.training.loggers.RunCSVLogger", "--data.init_args.dataset_config=null"]


def save_splits(folder, features: datasets.Features, splits: dict[str, dict]) -> str:
    """Parquet files whose schema carries the features (as the hub's parquet conversion does)."""
    for split, columns in splits.items():
        datasets.Dataset.from_dict(columns, features=features).to_parquet(str(folder / f"{split}.parquet"))
    return str(folder)


def test_conll2003_config_on_the_hub_schema(tmp_path):
    tag = datasets.ClassLabel(names=CONLL_TAGS)
    features = datasets.Features({"id": datasets.Value("string"), "tokens": datasets.Sequence(datasets.Value("string")),
                                  "pos_tags": datasets.Sequence(datasets.Value("int32")),
                                  "chunk_tags": datasets.Sequence(datasets.Value("int32")),
                                  "ner_tags": datasets.Sequence(tag)})
    sentence = (["John", "lives", "in", "Paris", "with", "Acme", "staff"], [1, 0, 0, 5, 0, 3, 0])

    def split(n):
        return {"id": [str(i) for i in range(n)], "tokens": [sentence[0]] * n, "pos_tags": [[0] * 7] * n,
                "chunk_tags": [[0] * 7] * n, "ner_tags": [sentence[1]] * n}

    folder = save_splits(tmp_path, features, {"train": split(16), "validation": split(8), "test": split(8)})
    run_dir = tmp_path / "run"
    cli = LitFinetuneCLI(args=["fit", "--config", str(REPO / "configs/ner/conll2003.yaml"),
                               f"--data.init_args.dataset_name={folder}", "--model.init_args.model_name_or_path=tiny:bert",
                               f"--trainer.default_root_dir={run_dir}", *SHORT])
    assert set(cli.model.labels.values()) == set(CONLL_TAGS)  # the ClassLabel names, not ids
    assert logged_values(run_dir, "val/f1")


def test_swag_config_on_the_hub_schema(tmp_path):
    names = ["video-id", "fold-ind", "startphrase", "sent1", "sent2", "gold-source", "ending0", "ending1", "ending2",
             "ending3"]
    features = datasets.Features({**{name: datasets.Value("string") for name in names},
                                  "label": datasets.ClassLabel(names=["0", "1", "2", "3"])})

    def split(n, labelled=True):
        return {"video-id": ["v"] * n, "fold-ind": [str(i) for i in range(n)], "startphrase": ["He opens. Then he"] * n,
                "sent1": ["He opens the door."] * n, "sent2": ["Then he"] * n, "gold-source": ["gold"] * n,
                **{f"ending{k}": [f"walks in {k}."] * n for k in range(4)},
                "label": [i % 4 for i in range(n)] if labelled else [-1] * n}

    folder = save_splits(tmp_path, features, {"train": split(16), "validation": split(8), "test": split(4, False)})
    run_dir = tmp_path / "run"
    LitFinetuneCLI(args=["fit", "--config", str(REPO / "configs/multiple_choice/swag.yaml"),
                         f"--data.init_args.dataset_name={folder}", "--model.init_args.model_name_or_path=tiny:bert",
                         f"--trainer.default_root_dir={run_dir}", *SHORT])
    assert logged_values(run_dir, "val/acc")


def test_no_robots_config_on_the_hub_schema(tmp_path):
    turn = {"content": datasets.Value("string"), "role": datasets.Value("string")}
    features = datasets.Features({"prompt": datasets.Value("string"), "prompt_id": datasets.Value("string"),
                                  "messages": [turn], "category": datasets.Value("string")})

    def split(n):
        return {"prompt": [f"Name colour {i}." for i in range(n)], "prompt_id": [str(i) for i in range(n)],
                "messages": [[{"content": "You are terse.", "role": "system"},
                              {"content": f"Name colour {i}.", "role": "user"},
                              {"content": "Blue.", "role": "assistant"}] for i in range(n)],
                "category": ["Brainstorm"] * n}

    folder = save_splits(tmp_path, features, {"train": split(8), "test": split(4)})
    run_dir = tmp_path / "run"
    LitFinetuneCLI(args=["fit", "--config", str(REPO / "configs/sft/smollm2_instructions.yaml"),
                         f"--data.init_args.dataset_name={folder}", "--model.init_args.model_name_or_path=tiny:llama",
                         "--model.init_args.tokenizer_name_or_path=smollm2",  # the packaged one, with a chat template
                         f"--trainer.default_root_dir={run_dir}", *SHORT])
    assert logged_values(run_dir, "val/loss")
