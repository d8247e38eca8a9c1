"""Where a model computes: the device asked for, its dtype, accelerate's placement.

A device asked for by name must exist (``cuda`` on a machine without CUDA is an error, never a
silent CPU run), and with accelerate's offload a module's weights may sit on ``meta`` between
passes: every tensor the analyses make goes where the module actually computes.
"""

from __future__ import annotations

import torch
from accelerate import init_empty_weights
from transformers import AutoModelForCausalLM


def resolve_device(device: str | None = "auto") -> torch.device:
    """``"auto"`` is cuda when torch sees a GPU, else cpu. A device asked for by name must
    exist: ``cuda`` on a machine without CUDA is an error, never a silent CPU run."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"Unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from err
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"DEVICE={device} was asked for, but torch sees no CUDA device on this machine (torch "
                f"{torch.__version__}, built {'for CUDA ' + torch.version.cuda if torch.version.cuda else 'for CPU only'})."
                " Use DEVICE=auto or DEVICE=cpu to run on the CPU, or install a CUDA build of torch.")
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise RuntimeError(f"DEVICE={device}: this machine has {count} CUDA devices (cuda:0 .. cuda:{count - 1})")
    elif resolved.type == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError(f"DEVICE={device} was asked for, but torch sees no MPS device; use DEVICE=auto or cpu")
    return resolved


def resolve_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
             "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if dtype not in names:
        raise ValueError(f"Unknown dtype {dtype!r}; use one of {sorted(names)}")
    return names[dtype]


def execution_device(module: torch.nn.Module) -> torch.device:
    """Where ``module`` computes: accelerate's execution device when it dispatched the module
    (its weights may then sit on ``meta`` until the module runs), else where its first
    parameter or buffer lives."""
    for sub in module.modules():  # the module's own hook first, then its submodules' (offloaded leaves)
        device = getattr(getattr(sub, "_hf_hook", None), "execution_device", None)
        if device is not None:
            return torch.device(device if not isinstance(device, int) else f"cuda:{device}")
    for tensor in list(module.parameters()) + list(module.buffers()):
        if tensor.device.type != "meta":
            return tensor.device
    return torch.device("cpu")


def is_offloaded(model) -> bool:
    """Whether accelerate keeps some of the weights off the execution device (CPU or disk offload)."""
    return any(getattr(getattr(m, "_hf_hook", None), "offload", False) for m in model.modules())


def fits_one_gpu(config, dtype: torch.dtype, device: torch.device) -> bool:
    """Whether the weights fit on ``device`` with a fifth of its free memory to spare."""
    with init_empty_weights():
        empty = AutoModelForCausalLM.from_config(config)
    size = sum(p.numel() for p in empty.parameters()) * torch.empty((), dtype=dtype).element_size()
    free, _ = torch.cuda.mem_get_info(device)
    return size < 0.8 * free


__all__ = ["execution_device", "fits_one_gpu", "is_offloaded", "resolve_device", "resolve_dtype"]
