"""GPU parity check: ``tasks.syncbn`` against ``torch.nn.SyncBatchNorm`` on CUDA.

Usage (on a machine with a GPU)::

    python bench/gpu_syncbn.py [--batch 32 --channels 16 --size 8 --steps 3 --atol 1e-4]

One process, a world-size-1 process group (NCCL for CUDA tensors and gloo for CPU ones when
NCCL is built in, else gloo). At world size 1 both modules fall back to plain BatchNorm, which
would make the comparison vacuous, so the script drives the synchronised code paths directly:
our ``sync_batch_norm`` (sum/sumsq/count all-reduce, autograd backward) on CUDA and on CPU,
and torch's ``SyncBatchNorm`` autograd Function (``batch_norm_stats`` / gather / elemt
kernels). It runs a few training steps on the same inputs and upstream gradients and prints one
JSON object: the max abs difference of outputs, input/weight/bias gradients and running stats
of each of ours against torch's (pass: each <= atol * max(1, max |torch's value|)), per-step
timings (the first includes warm-up), and ``"pass"``. Exit status 0 on pass (or
when there is no CUDA, with ``"status": "skipped"``), 1 on a mismatch.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

try:
    from tasks.syncbn import SyncBatchNorm, sync_batch_norm
except ImportError:  # run as a plain script from a checkout that is not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tasks.syncbn import SyncBatchNorm, sync_batch_norm

EPS = 1e-5
MOMENTUM = 0.1
Impl = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor
]


def _torch_sync_fn(group: Any) -> Impl:
    """torch's synchronised path, forced even at world size 1 (private API, hence the check)."""
    from torch.nn.modules._functions import SyncBatchNorm as TorchSyncBN

    def run(
        x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, rm: torch.Tensor, rv: torch.Tensor
    ) -> torch.Tensor:
        return TorchSyncBN.apply(x, w, b, rm, rv, EPS, MOMENTUM, group, dist.get_world_size(group))

    return run


def _our_sync_fn(group: Any) -> Impl:
    def run(
        x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, rm: torch.Tensor, rv: torch.Tensor
    ) -> torch.Tensor:
        return sync_batch_norm(x, rm, rv, w, b, MOMENTUM, EPS, group)

    return run


def _run(
    impl: Impl,
    device: torch.device,
    xs: list[torch.Tensor],
    gs: list[torch.Tensor],
    weight: torch.Tensor,
    bias: torch.Tensor,
) -> dict[str, Any]:
    """Train len(xs) steps of one BN layer on ``device``; return float64 CPU results."""
    c = weight.numel()
    # copy=True: on CPU .to() would return the caller's tensor, and its .grad would leak
    # from one implementation's run into the next.
    w = weight.to(device, copy=True).requires_grad_(True)
    b = bias.to(device, copy=True).requires_grad_(True)
    rm = torch.zeros(c, device=device)
    rv = torch.ones(c, device=device)
    out: dict[str, Any] = {"y": [], "dx": [], "dw": [], "db": [], "ms": []}
    for x_cpu, g_cpu in zip(xs, gs):
        x = x_cpu.to(device, copy=True).requires_grad_(True)
        g = g_cpu.to(device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        y = impl(x, w, b, rm, rv)
        (y * g).sum().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        out["ms"].append(round((time.perf_counter() - start) * 1e3, 3))
        for key, t in (("y", y), ("dx", x.grad), ("dw", w.grad), ("db", b.grad)):
            out[key].append(t.detach().double().cpu())
        w.grad = b.grad = None
    out["running_mean"] = rm.double().cpu()
    out["running_var"] = rv.double().cpu()
    return out


KEYS = ("y", "dx", "dw", "db", "running_mean", "running_var")


def _as_list(v: Any) -> list[torch.Tensor]:
    return v if isinstance(v, list) else [v]


def _max_diffs(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float]:
    """Max abs difference per quantity, over all steps."""
    return {
        k: max(float((p - q).abs().max()) for p, q in zip(_as_list(a[k]), _as_list(b[k])))
        for k in KEYS
    }


def _scales(ref: dict[str, Any]) -> dict[str, float]:
    """Max abs value per quantity: dw/db sum over batch*H*W terms, so their float32 rounding
    grows with their size; the tolerance is atol * max(1, scale)."""
    return {k: max(float(t.abs().max()) for t in _as_list(ref[k])) for k in KEYS}


def _module_check(device: torch.device, x: torch.Tensor) -> float:
    """Module wiring on CUDA (world size 1: both are plain BN): max abs diff of outputs."""
    ours = SyncBatchNorm(x.size(1)).to(device)
    theirs = torch.nn.SyncBatchNorm(x.size(1)).to(device)
    return float((ours(x.to(device)) - theirs(x.to(device))).abs().max())


def main(argv: list[str] | None = None) -> int:
    """Run the comparison; print one JSON object; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--size", type=int, default=8, help="spatial side (4D input)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument(
        "--atol",
        type=float,
        default=1e-4,
        help="tolerance, scaled by max(1, max |reference|) per quantity",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if not torch.cuda.is_available():
        print(
            "gpu_syncbn: no CUDA device visible to torch "
            f"{torch.__version__}; nothing to compare, skipping.",
            file=sys.stderr,
        )
        print(json.dumps({"status": "skipped", "reason": "no CUDA device", "pass": None}))
        return 0

    gen = torch.Generator().manual_seed(args.seed)
    shape = (args.batch, args.channels, args.size, args.size)
    # A non-zero mean and non-unit spread so the statistics actually matter.
    xs = [torch.randn(shape, generator=gen) * 2.0 + 0.5 for _ in range(args.steps)]
    gs = [torch.randn(shape, generator=gen) for _ in range(args.steps)]
    weight = torch.rand(args.channels, generator=gen) + 0.5
    bias = torch.randn(args.channels, generator=gen)

    # NCCL handles the CUDA tensors, gloo the CPU ones, in one default group.
    backend = "cpu:gloo,cuda:nccl" if dist.is_nccl_available() else "gloo"
    cuda = torch.device("cuda", torch.cuda.current_device())
    report: dict[str, Any] = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(),
        "backend": backend,
        "shape": list(shape),
        "steps": args.steps,
        "atol": args.atol,
    }
    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group(backend, init_method=f"file://{tmp}/store", rank=0, world_size=1)
        try:
            group = dist.group.WORLD
            ref = _run(_torch_sync_fn(group), cuda, xs, gs, weight, bias)
            ours = {
                "ours_cuda": (cuda, _our_sync_fn(group)),
                "ours_cpu": (torch.device("cpu"), _our_sync_fn(group)),
            }
            report["ms_per_step"] = {"torch_cuda": ref["ms"]}
            scale = _scales(ref)
            report["ref_max_abs"] = scale
            ok = True
            for name, (device, impl) in ours.items():
                got = _run(impl, device, xs, gs, weight, bias)
                diffs = _max_diffs(got, ref)
                report[f"{name}_vs_torch_cuda"] = diffs
                report["ms_per_step"][name] = got["ms"]
                ok = ok and all(diffs[k] <= args.atol * max(1.0, scale[k]) for k in KEYS)
            report["module_cuda_max_abs_diff"] = _module_check(cuda, xs[0])
            ok = ok and report["module_cuda_max_abs_diff"] <= args.atol
        finally:
            dist.destroy_process_group()
    report["status"] = "ran"
    report["pass"] = ok
    print(json.dumps(report))
    print(f"gpu_syncbn: {'PASS' if ok else 'FAIL'} (atol {args.atol})", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
