"""Model FLOPs utilisation (MFU): the FLOPs a model's training step needs, counted from its config, against what the
device can do at most (Lightning's table of GPU peaks; on CPU a matmul measured once per process)."""

from __future__ import annotations

import time

import torch
from lightning.fabric.utilities.throughput import get_available_flops

PRECISION_DTYPES = {"bf16-mixed": torch.bfloat16, "bf16-true": torch.bfloat16, "16-mixed": torch.float16,
                    "16-true": torch.float16}
_measured_cpu_peaks: dict = {}


def matmul_parameters(model: torch.nn.Module) -> int:
    """Parameters that take part in matmuls: all but embedding tables (a lookup), with a tied output layer counted
    once for its matmul. Sharded (DTensor) parameters count whole."""
    embeddings = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    total = sum(p.numel() for p in model.parameters() if id(p) not in embeddings)
    get_output = getattr(model, "get_output_embeddings", None)
    output = get_output() if get_output else None
    if output is not None and id(output.weight) in embeddings:
        total += output.weight.numel()
    return total


def model_shape(config) -> tuple[int, int]:
    """(Transformer layers, hidden size) of a Hugging Face config, encoder and decoder layers added up."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    if getattr(config, "is_encoder_decoder", False):
        layers = (getattr(config, "encoder_layers", None) or getattr(config, "num_layers", 0)) + \
            (getattr(config, "decoder_layers", None) or getattr(config, "num_decoder_layers", None) or
             getattr(config, "num_layers", 0))
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None) or config.d_model
    return int(layers or 0), int(hidden)


def training_flops_per_token(matmul_params: int, layers: int, hidden: int, sequence_length: int) -> float:
    """Forward and backward FLOPs per token (PaLM's count): 6 per matmul parameter, plus 12 x layers x hidden x
    sequence length for the attention scores and their use."""
    return 6 * matmul_params + 12 * layers * hidden * sequence_length


def measured_cpu_peak(dtype: torch.dtype = torch.float32, size: int = 1024, seconds: float = 0.3) -> float:
    """FLOP/s of a square matmul on this process's CPU threads: the most its training matmuls can reach here."""
    key = (dtype, torch.get_num_threads())
    if key not in _measured_cpu_peaks:
        a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
        a @ b  # warm-up
        runs, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            a @ b
            runs += 1
        _measured_cpu_peaks[key] = 2 * size ** 3 * runs / (time.perf_counter() - started)
    return _measured_cpu_peaks[key]


def peak_flops(device: torch.device, precision: str) -> tuple[float | None, str]:
    """The device's peak FLOP/s in the run's compute precision, and where the number comes from; None when
    Lightning's table does not know the GPU."""
    dtype = PRECISION_DTYPES.get(str(precision), torch.float32)
    if device.type == "cpu":
        return measured_cpu_peak(dtype if dtype != torch.float16 else torch.float32), "measured CPU matmul"
    flops = get_available_flops(device, dtype)
    return (float(flops) if flops else None), f"{torch.cuda.get_device_name(device)} datasheet"
