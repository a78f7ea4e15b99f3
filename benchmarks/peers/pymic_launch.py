"""Runs INSIDE the PyMIC virtual environment (never imports weakseg): train one PyMIC
configuration on the CPU, or predict the validation volumes with a trained one.

    <pymic-venv>/bin/python pymic_launch.py train   CFG --threads 1
    <pymic-venv>/bin/python pymic_launch.py predict CFG OUT.npz --threads 1
    <pymic-venv>/bin/python pymic_launch.py versions

PyMIC 0.6.2 has no CPU mode: ``SegmentationAgent.train_valid`` and ``infer`` build
``torch.device("cuda:{gpus[0]}")`` unconditionally, which a CPU build of torch rejects
("Torch not compiled with CUDA enabled"). ``cpu_shim`` replaces the ``torch`` name inside
``pymic.net_run.agent_seg`` (the module that holds both methods, inherited by every weak
supervision agent) by a proxy whose ``device("cuda...")`` is the CPU; nothing else changes.
Training then goes through PyMIC's own ``pymic_train`` entry point (``pymic.net_run.train.main``).

PyMIC 0.6.2 also imports, at module level and without declaring them, packages that only
its other networks and transforms use. ``setup`` installs those that install cleanly beside
the CPU torch (einops, ml-collections, monai, imops). Two cannot: the PyPI wheels of
torchvision for torch 2.13 are CUDA builds whose C extension does not load beside the CPU
torch (``import torchvision`` fails with "RuntimeError: operator torchvision::nms does not
exist"), and timm needs torchvision. ``absent_shim`` registers placeholders for both (any
name imported from them is a class that raises ImportError when used) and a real
``torchvision.transforms.Compose`` (apply the transforms in order), the only torchvision
object PyMIC's segmentation agents call. The networks that use timm (SwinUNet, VM-UNet,
UNETR++) are not used here.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import importlib.abc
import importlib.util
import json
import os
import sys
import time
import types

#: packages PyMIC imports that cannot be loaded here (see the module docstring)
ABSENT = ("torchvision", "timm")


def _absent_attr(module: str, name: str):
    if name.startswith("__"):
        raise AttributeError(name)

    def refuse(*args, **kwargs):
        raise ImportError(f"{module}.{name} is a placeholder: {module.split('.')[0]} cannot be "
                          "loaded beside the CPU torch (benchmarks/peers/README.md)")

    return type(name, (), {"__init__": refuse, "__call__": refuse, "__module__": module})


class _AbsentFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds every module under the ``roots`` packages as an empty package whose names are
    placeholders (``_absent_attr``)."""

    def __init__(self, roots: set[str]) -> None:
        self.roots = roots

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in self.roots:
            return importlib.util.spec_from_loader(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__path__ = []
        module.__getattr__ = functools.partial(_absent_attr, spec.name)
        return module

    def exec_module(self, module) -> None:
        if module.__name__ == "torchvision.transforms":
            module.Compose = Compose


class Compose:
    """``torchvision.transforms.Compose``: apply the transforms in order."""

    def __init__(self, transforms) -> None:
        self.transforms = list(transforms)

    def __call__(self, sample):
        for t in self.transforms:
            sample = t(sample)
        return sample


def absent_shim() -> list[str]:
    """Placeholders for the packages of ``ABSENT`` that do not import; returns their names."""
    roots = set()
    for name in ABSENT:
        try:
            importlib.import_module(name)
        except Exception:  # missing, or a CUDA build that cannot load beside the CPU torch
            for m in [m for m in sys.modules if m.split(".")[0] == name]:
                del sys.modules[m]
            roots.add(name)
    if roots:
        sys.meta_path.insert(0, _AbsentFinder(roots))
    return sorted(roots)


def cpu_shim() -> None:
    """Make PyMIC's hard-coded CUDA devices the CPU (see the module docstring)."""
    import torch
    from pymic.net_run import agent_seg

    class _CpuTorch(types.ModuleType):
        def __getattr__(self, name: str):  # everything else is the real torch
            return getattr(torch, name)

        @staticmethod
        def device(spec, *args):
            if isinstance(spec, str) and spec.startswith("cuda"):
                return torch.device("cpu")
            return torch.device(spec, *args)

    agent_seg.torch = _CpuTorch("torch")


def resume_shim() -> None:
    """Let PyMIC's own resume (``ckpt_init_mode = 1``) read its own checkpoints: they hold
    numpy scalars (``valid_pred``), which ``torch.load``'s default ``weights_only=True``
    (torch >= 2.6) refuses ("Unsupported global: GLOBAL numpy._core.multiarray.scalar")."""
    import numpy as np
    import torch

    dtypes = [type(np.dtype(t)) for t in (np.float16, np.float32, np.float64, np.int32,
                                          np.int64)]
    torch.serialization.add_safe_globals([np._core.multiarray.scalar, np.dtype, *dtypes])


def shims() -> None:
    absent_shim()
    cpu_shim()
    resume_shim()


def _threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set
        pass


def train(cfg: str, threads: int) -> None:
    _threads(threads)
    shims()
    from pymic.net_run import train as pymic_train

    sys.argv = ["pymic_train", cfg]
    t0 = time.time()
    pymic_train.main()
    print(json.dumps({"launcher_wall_s": time.time() - t0}), flush=True)


def _parse(cfg: str) -> dict:
    from pymic.util.parse_config import parse_config, synchronize_config

    return synchronize_config(parse_config(argparse.Namespace(cfg=cfg)))


def _agent(config: dict, stage: str):
    from pymic.net_run.agent_seg import SegmentationAgent
    from pymic.net_run.weak_sup import WSLMethodDict

    if config["dataset"].get("supervise_type", "fully_sup") == "weak_sup":
        return WSLMethodDict[config["weakly_supervised_learning"]["method_name"]](config, stage)
    return SegmentationAgent(config, stage)


def predict(cfg: str, out: str, threads: int) -> None:
    """Softmax of the selected checkpoint (``ckpt_mode = 1``: PyMIC's best validation Dice) on
    every volume of ``test_csv``, through PyMIC's own test transforms and ``Inferer``, saved
    as float32 ``(C, Z, H, W)`` arrays keyed by volume name. The main branch of dual-branch
    networks is used, as PyMIC's ``save_outputs`` does. No post-processing."""
    import numpy as np
    import torch
    from pymic.net_run.infer_func import Inferer

    _threads(threads)
    shims()
    config = _parse(cfg)
    training = config["training"]
    prefix = training.get("ckpt_prefix") or training["ckpt_dir"].rstrip("/").split("/")[-1]
    if not os.path.exists(f"{training['ckpt_dir']}/{prefix}_best.txt"):
        # no validation Dice above 0 ever (PyMIC then writes no best): the latest checkpoint
        config["testing"]["ckpt_mode"] = 0
    agent = _agent(config, "test")
    agent.create_dataset()
    agent.create_network()
    net = agent.net.to(torch.device("cpu"))
    ckpt_name = agent.get_checkpoint_name()
    ckpt = torch.load(ckpt_name, map_location="cpu", weights_only=False)
    net.load_state_dict(ckpt["model_state_dict"])
    net.eval()
    infer_cfg = dict(config["testing"], class_num=config["network"]["class_num"])
    inferer = Inferer(infer_cfg)
    probs: dict[str, np.ndarray] = {}
    t0 = time.time()
    with torch.no_grad():
        for data in agent.test_loader:
            images = agent.convert_tensor_type(data["image"])
            logits = inferer.run(net, images)
            if isinstance(logits, (list, tuple)):
                logits = logits[0]
            p = torch.softmax(logits.float(), dim=1)[0].cpu().numpy()  # (C, Z, H, W)
            name = data["names"][0][0].split("/")[-1].replace(".nii.gz", "")
            probs[name] = p.astype(np.float32)
    np.savez_compressed(out, **probs)
    print(json.dumps({"checkpoint": ckpt_name, "ckpt_mode": config["testing"]["ckpt_mode"],
                      "iteration": ckpt.get("iteration"),
                      "valid_pred": float(ckpt.get("valid_pred", float("nan"))),
                      "volumes": len(probs), "predict_s": time.time() - t0}), flush=True)


def versions() -> None:
    from importlib import metadata

    import torch

    names = ["pymic", "torch", "torchvision", "timm", "numpy", "scipy", "SimpleITK", "h5py",
             "scikit-image", "pandas", "tensorboardX", "einops", "ml-collections", "monai",
             "imops"]
    out = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = None
    nvidia = sorted(d.metadata["Name"] for d in metadata.distributions()
                    if (d.metadata["Name"] or "").lower().startswith(("nvidia-", "triton")))
    out.update({"torch_cuda": torch.version.cuda, "cuda_packages": nvidia,
                "python": sys.version.split()[0], "executable": sys.executable})
    print(json.dumps(out))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("cfg")
    t.add_argument("--threads", type=int, default=1)
    q = sub.add_parser("predict")
    q.add_argument("cfg")
    q.add_argument("out")
    q.add_argument("--threads", type=int, default=1)
    sub.add_parser("versions")
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(getattr(args, "threads", 1)))
    if args.cmd == "train":
        train(args.cfg, args.threads)
    elif args.cmd == "predict":
        predict(args.cfg, args.out, args.threads)
    else:
        versions()


if __name__ == "__main__":
    main()
