"""Which device to compute on: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` | ``mps``."""

from __future__ import annotations

import torch

from weakseg.errors import WeaksegError

__all__ = ["resolve_device"]


def resolve_device(name: str, option: str = "--device") -> torch.device:
    """``name`` as a torch device, refusing one this torch build or machine cannot use.

    ``auto`` is CUDA when a GPU is visible, else the CPU (``mps`` is only used when asked
    for). ``option`` names the setting in the messages (``train.device``, ``--device``).
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise WeaksegError(f"bad {option} '{name}'; use auto, cpu, cuda, cuda:N or mps") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else "no visible GPU"
            raise WeaksegError(
                f"{option}={name} but this torch {torch.__version__} has {build}; use "
                f"{option}=cpu (or auto), or install a CUDA build of torch"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise WeaksegError(
                f"{option}={name} but only {torch.cuda.device_count()} GPU(s) are visible; "
                f"use cuda:0..cuda:{torch.cuda.device_count() - 1}"
            )
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise WeaksegError(f"{option}=mps but this machine or torch build has no MPS "
                               f"(Apple GPU); use {option}=cpu")
    elif device.type != "cpu":
        raise WeaksegError(f"{option}={name} is not supported; use auto, cpu, cuda, cuda:N or mps")
    return device
