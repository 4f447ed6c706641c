"""`lit-finetune quickstart-data`: the embedded dataset the README's first command trains on."""

from __future__ import annotations

from lit_finetune.data.synthetic import write_quickstart_data


def write_data(output_dir: str, seed: int = 0) -> None:
    """Write the quickstart's aspect-sentiment CSVs (train 3,000, validation 500, test 500 rows) into a folder.

    Args:
        output_dir: Folder for train.csv, validation.csv and test.csv.
        seed: Seed of the generator; the same seed writes the same files.
    """
    for split, path in write_quickstart_data(output_dir, seed=seed).items():
        print(f"{split}: {path}")
