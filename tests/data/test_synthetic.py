"""The quickstart data must be reproducible, balanced, aspect-dependent and safely written."""

import csv
from collections import Counter, defaultdict

from lit_finetune.data.synthetic import LABELS, generate, write_quickstart_data

SIZES = (("train", 600), ("validation", 200), ("test", 200))


def test_same_seed_gives_identical_files_and_splits_differ(tmp_path):
    first = write_quickstart_data(tmp_path / "a", seed=0, sizes=SIZES)
    again = write_quickstart_data(tmp_path / "b", seed=0, sizes=SIZES)
    assert {split: path.read_bytes() for split, path in first.items()} == {split: path.read_bytes() for split, path in again.items()}
    contents = [path.read_text(encoding="utf-8").splitlines()[1:] for path in first.values()]
    assert len({tuple(lines) for lines in contents}) == len(SIZES)
    other_seed = write_quickstart_data(tmp_path / "c", seed=1, sizes=SIZES)
    assert other_seed["train"].read_bytes() != first["train"].read_bytes()


def test_labels_ids_and_balance():
    examples = generate(2000, seed=0)
    assert len(examples) == 2000
    assert len({example["id"] for example in examples}) == len(examples)
    assert all(example["id"].startswith("ex-") for example in examples)
    counts = Counter(example["label"] for example in examples)
    assert set(counts) == set(LABELS)
    assert all(0.25 <= counts[label] / len(examples) <= 0.45 for label in LABELS)


def test_contrast_review_has_different_labels_per_aspect():
    labels_by_review = defaultdict(set)
    for example in generate(500, seed=0):
        if ", but " in example["review"]:
            labels_by_review[example["review"]].add(example["label"])
    assert any({"negative", "positive"} <= labels for labels in labels_by_review.values())


def test_csv_reads_back_with_expected_header(tmp_path):
    paths = write_quickstart_data(tmp_path, sizes=SIZES)
    assert set(paths) == {"train", "validation", "test"}
    for split, size in SIZES:
        with paths[split].open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
        assert reader.fieldnames == ["id", "review", "aspect", "label"]
        assert len(rows) == size
        assert {row["label"] for row in rows} <= set(LABELS)


def test_rewrite_is_idempotent_and_leaves_no_temp_files(tmp_path):
    before = {split: path.read_bytes() for split, path in write_quickstart_data(tmp_path, sizes=SIZES).items()}
    after = {split: path.read_bytes() for split, path in write_quickstart_data(tmp_path, sizes=SIZES).items()}
    assert before == after
    assert sorted(path.name for path in tmp_path.iterdir()) == ["test.csv", "train.csv", "validation.csv"]
