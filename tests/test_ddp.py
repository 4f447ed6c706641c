"""`fit` under DDP with 2 CPU processes (gloo): data tokenized once, metrics synced, checkpoint loadable."""

import json

import pytest
from helpers import metrics_rows, run_cli, tiny_args

from lit_finetune.commands.fit import LitFinetuneCLI


@pytest.mark.slow
def test_ddp_fit_tokenizes_once_syncs_metrics_and_checkpoints(tmp_path, tiny_data):
    run_dir, cache = tmp_path / "run", tmp_path / "cache"
    args = tiny_args(tiny_data, run_dir, f"--data.init_args.cache_dir={cache}", "--trainer.max_epochs=1")
    result = run_cli("fit", *args, "--trainer.strategy=ddp", "--trainer.devices=2",
                     "--data.init_args.eval_batch_size=4")
    output = result.stdout + result.stderr
    assert output.count("examples; cached in") == 1  # prepare_data ran on rank 0 only
    [cached] = cache.glob("classification/*/meta.json")
    assert json.loads(cached.read_text())["tokenized_by_rank"] == 0

    # Each rank saw half of the 32 validation rows; the logged values must be those of all 32.
    ddp_val = {k: float(v) for row in metrics_rows(run_dir) for k, v in row.items() if k in ("val/loss", "val/acc") and v}
    single = LitFinetuneCLI(args=["validate", *tiny_args(tiny_data, tmp_path / "single"),
                                  "--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt")])
    single_val = {k: float(v) for k, v in single.trainer.callback_metrics.items() if k in ddp_val}
    assert single_val == pytest.approx(ddp_val, abs=1e-5) and len(single_val) == 2
