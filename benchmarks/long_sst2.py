"""Build a long-text variant of SST-2 under /tmp, for measuring speed and memory at long batch lengths.

Each row is one SST-2 training phrase followed by 14 others drawn at random (seed 0). It carries the first phrase's
label, so the labels are mostly noise: this set measures steps, not accuracy. Most rows are over 128 MiniLM tokens,
so batches pad to the recipe's max_length of 128.

    python benchmarks/long_sst2.py           # writes /tmp/lit_finetune_long_sst2/{train,dev}.tsv
    python benchmarks/sst2_classification.py --systems lit --data_dir /tmp/lit_finetune_long_sst2
"""

import argparse
import os
import random
from pathlib import Path

from common import SST2, read_glue_tsv

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/lit_finetune_long_sst2"))
    parser.add_argument("--train_rows", type=int, default=1200)
    parser.add_argument("--dev_rows", type=int, default=256)
    parser.add_argument("--phrases", type=int, default=15, help="SST-2 phrases per row")
    args = parser.parse_args()
    os.chdir(REPO)  # SST2 is relative to the repo root
    rows = [(row["sentence"], row["label"]) for row in read_glue_tsv(SST2 / "train.tsv")]
    rng = random.Random(0)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, count in (("train", args.train_rows), ("dev", args.dev_rows)):
        lines = ["sentence\tlabel\n"]
        for _ in range(count):
            first = rng.choice(rows)
            rest = " ".join(rng.choice(rows)[0] for _ in range(args.phrases - 1))
            lines.append(f"{first[0]} {rest}\t{first[1]}\n")
        (args.out / f"{name}.tsv").write_text("".join(lines), encoding="utf-8")
    print(f"wrote {args.out}/train.tsv ({args.train_rows} rows) and dev.tsv ({args.dev_rows} rows)")


if __name__ == "__main__":
    main()
