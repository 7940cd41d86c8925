"""Tests for tasks.syncbn: synchronized BatchNorm over gloo vs BN on the global batch.

Each distributed test spawns ``world`` CPU processes (gloo, FileStore rendezvous in tmp_path).
Rank ``r`` gets the slice ``shards[r]`` of a fixed global batch, runs a few training steps with
a fixed random upstream gradient ``G`` (loss_r = sum(y_r * G_r)), then an eval forward, and
saves what it saw to ``tmp_path/rank{r}.pt``. The parent runs a single-process torch BatchNorm
on the concatenated batch with loss = sum(y * G) (= the sum of the ranks' losses) and checks:

* outputs and input gradients: the concatenation over ranks equals the reference;
* weight/bias gradients: the SUM over ranks of each rank's local .grad equals the reference
  (DDP averages instead, i.e. this sum / world; the DDP case below checks that end to end);
* running_mean, running_var, num_batches_tracked on every rank equal the reference;
* eval outputs equal the reference's, and eval does no all-reduce; training does exactly one
  all-reduce per forward and one per backward.

Sensitivity: per-shard plain BN must NOT match the reference, and the same SyncBatchNorm with
the gradient all-reduce disabled (identity backward) must give wrong input gradients.
"""

from __future__ import annotations

import copy
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from tasks import syncbn
from tasks.syncbn import SyncBatchNorm, convert_for_device, convert_sync_batchnorm

STEPS = 3
ATOL, RTOL = 2e-5, 1e-4
# (torch BN class, channels, per-sample shape, momentum): 4D, 2D and 3D inputs, both
# momentum conventions (None = cumulative average).
SCENARIOS: dict[str, tuple[str, int, tuple[int, ...], float | None]] = {
    "bn2d": ("BatchNorm2d", 3, (3, 3, 3), 0.1),
    "bn1d_2d": ("BatchNorm1d", 5, (5,), None),
    "bn1d_3d": ("BatchNorm1d", 4, (4, 6), 0.3),
}


def _make_data(n: int, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Fixed global batches per scenario; a drift along the batch makes shards differ."""
    g = torch.Generator().manual_seed(seed)
    data: dict[str, dict[str, Any]] = {}
    for name, (_, c, shape, _) in SCENARIOS.items():
        drift = torch.linspace(-2.0, 2.0, n).view(n, *[1] * len(shape))

        def batch(shape: tuple[int, ...] = shape, drift: torch.Tensor = drift) -> torch.Tensor:
            return torch.randn((n, *shape), generator=g) * 1.5 + 0.7 + drift

        data[name] = {
            "xs": [batch() for _ in range(STEPS)],
            "gs": [torch.randn((n, *shape), generator=g) for _ in range(STEPS)],
            "eval_x": batch(),
            "weight": torch.rand(c, generator=g) + 0.5,
            "bias": torch.randn(c, generator=g),
        }
    return data


def _new_bn(cls: type[nn.Module], name: str, d: dict[str, Any]) -> nn.Module:
    _, c, _, momentum = SCENARIOS[name]
    bn = cls(c, momentum=momentum)
    with torch.no_grad():
        bn.weight.copy_(d["weight"])
        bn.bias.copy_(d["bias"])
    return bn


def _run(
    bn: nn.Module, xs: list[torch.Tensor], gs: list[torch.Tensor], eval_x: torch.Tensor
) -> dict[str, Any]:
    """Train STEPS forwards/backwards (no optimizer), then one eval forward; record it all."""
    out: dict[str, Any] = {"y": [], "dx": [], "dw": [], "db": []}
    bn.train()
    for x, g in zip(xs, gs):
        x = x.clone().requires_grad_(True)
        y = bn(x)
        (y * g).sum().backward()
        out["y"].append(y.detach())
        out["dx"].append(x.grad if x.grad is not None else torch.zeros_like(x))
        out["dw"].append(bn.weight.grad.clone())
        out["db"].append(bn.bias.grad.clone())
        bn.weight.grad = bn.bias.grad = None
    bn.eval()
    with torch.no_grad():
        out["eval_y"] = bn(eval_x)
    out["running_mean"] = bn.running_mean.clone()
    out["running_var"] = bn.running_var.clone()
    out["nbt"] = int(bn.num_batches_tracked)
    return out


def _shard(t: torch.Tensor, shards: list[int], rank: int) -> torch.Tensor:
    start = sum(shards[:rank])
    return t[start : start + shards[rank]]


def _ddp_model() -> nn.Sequential:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 3 * 3, 2),
    )


def _targets(n: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return [torch.randn(n, 2, generator=g) for _ in range(STEPS)]


def _ddp_train(
    model: nn.Module, xs: list[torch.Tensor], targets: list[torch.Tensor], scale: float
) -> dict[str, torch.Tensor]:
    """SGD on loss = scale * sum of per-sample squared errors; returns the final state."""
    model.train()
    for x, t in zip(xs, targets):
        model.zero_grad()
        (scale * ((model(x) - t) ** 2).sum()).backward()
        with torch.no_grad():  # plain SGD by hand: torch.optim's first step imports dynamo (~3 s)
            for p in model.parameters():
                p -= 0.05 * p.grad
    inner = model.module if hasattr(model, "module") else model
    return {k: v.detach().clone() for k, v in inner.state_dict().items()}


def _worker(rank: int, world: int, shards: list[int], tmp: str, with_ddp: bool) -> None:
    torch.set_num_threads(1)  # 2 shared cores: no intra-op oversubscription
    dist.init_process_group(
        "gloo",
        init_method=f"file://{tmp}/store",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=60),
    )
    data = torch.load(f"{tmp}/data.pt")
    result: dict[str, Any] = {}

    # Count collectives: syncbn looks dist.all_reduce up at call time.
    calls: list[int] = []
    real_all_reduce = dist.all_reduce

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real_all_reduce(*args, **kwargs)

    dist.all_reduce = counting
    try:
        for name, d in data.items():
            bn = _new_bn(SyncBatchNorm, name, d)
            xs = [_shard(x, shards, rank) for x in d["xs"]]
            gs = [_shard(g, shards, rank) for g in d["gs"]]
            calls.clear()
            x = xs[0].clone().requires_grad_(True)
            y = bn(x)
            n_fwd = len(calls)
            (y * gs[0]).sum().backward()
            n_bwd = len(calls) - n_fwd
            bn.eval()
            bn(_shard(d["eval_x"], shards, rank))
            n_eval = len(calls) - n_fwd - n_bwd
            result[f"{name}/calls"] = (n_fwd, n_bwd, n_eval)
            # The real run, on a fresh module.
            result[name] = _run(
                _new_bn(SyncBatchNorm, name, d), xs, gs, _shard(d["eval_x"], shards, rank)
            )
    finally:
        dist.all_reduce = real_all_reduce

    # Sensitivity: without the gradient all-reduce, input gradients must come out wrong.
    d = data["bn2d"]
    real_backward = syncbn._AllReduceSum.backward
    syncbn._AllReduceSum.backward = staticmethod(lambda ctx, grad: (grad, None))
    try:
        x = _shard(d["xs"][0], shards, rank).clone().requires_grad_(True)
        (_new_bn(SyncBatchNorm, "bn2d", d)(x) * _shard(d["gs"][0], shards, rank)).sum().backward()
        result["nondiff_dx"] = x.grad if x.grad is not None else torch.zeros_like(x)
    finally:
        syncbn._AllReduceSum.backward = real_backward

    if with_ddp:
        # End to end with DDP: loss_r = (world / N) * local sum, so DDP's gradient average
        # equals the gradient of the global mean loss the reference minimises.
        n = sum(shards)
        model = nn.parallel.DistributedDataParallel(convert_sync_batchnorm(_ddp_model()))
        xs = [_shard(x, shards, rank) for x in d["xs"]]
        ts = [_shard(t, shards, rank) for t in _targets(n)]
        result["ddp"] = _ddp_train(model, xs, ts, world / n)

    torch.save(result, f"{tmp}/rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


def _spawn(
    tmp_path: Path, shards: list[int], with_ddp: bool = False
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    data = _make_data(sum(shards))
    torch.save(data, tmp_path / "data.pt")
    world = len(shards)
    mp.spawn(_worker, args=(world, shards, str(tmp_path), with_ddp), nprocs=world, join=True)
    return data, [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]


def _close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    torch.testing.assert_close(a, b, atol=ATOL, rtol=RTOL, msg=lambda m: f"{what}: {m}")


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def _check_against_reference(
    data: dict[str, Any], ranks: list[dict[str, Any]], shards: list[int]
) -> None:
    for name, d in data.items():
        cls = getattr(nn, SCENARIOS[name][0])
        ref = _run(_new_bn(cls, name, d), d["xs"], d["gs"], d["eval_x"])
        got = [r[name] for r in ranks]
        for t in range(STEPS):
            _close(torch.cat([g["y"][t] for g in got]), ref["y"][t], f"{name} y step {t}")
            _close(torch.cat([g["dx"][t] for g in got]), ref["dx"][t], f"{name} dx step {t}")
            _close(sum(g["dw"][t] for g in got), ref["dw"][t], f"{name} sum dweight step {t}")
            _close(sum(g["db"][t] for g in got), ref["db"][t], f"{name} sum dbias step {t}")
        _close(torch.cat([g["eval_y"] for g in got]), ref["eval_y"], f"{name} eval y")
        for r, g in enumerate(got):
            _close(g["running_mean"], ref["running_mean"], f"{name} running_mean rank {r}")
            _close(g["running_var"], ref["running_var"], f"{name} running_var rank {r}")
            assert g["nbt"] == ref["nbt"] == STEPS
            # One all-reduce per training forward and per backward; none in eval.
            assert ranks[r][f"{name}/calls"] == (1, 1, 0)

    # Sensitivity, same data: plain BN per shard and a non-differentiable all-reduce both miss.
    d = data["bn2d"]
    ref = _run(_new_bn(nn.BatchNorm2d, "bn2d", d), d["xs"], d["gs"], d["eval_x"])
    local_y, local_mean = [], []
    for r in range(len(shards)):
        if shards[r] == 0:
            continue
        loc = _run(
            _new_bn(nn.BatchNorm2d, "bn2d", d),
            [_shard(d["xs"][0], shards, r)],
            [_shard(d["gs"][0], shards, r)],
            _shard(d["eval_x"], shards, r),
        )
        local_y.append(loc["y"][0])
        local_mean.append(loc["running_mean"])
    nonempty = torch.cat([_shard(ref["y"][0], shards, r) for r in range(len(shards)) if shards[r]])
    assert _max_diff(torch.cat(local_y), nonempty) > 0.1
    ref1 = _run(_new_bn(nn.BatchNorm2d, "bn2d", d), d["xs"][:1], d["gs"][:1], d["eval_x"])
    assert max(_max_diff(m, ref1["running_mean"]) for m in local_mean) > 0.01
    nondiff = torch.cat([r["nondiff_dx"] for r in ranks])
    assert _max_diff(nondiff, ref["dx"][0]) > 0.01


def test_two_ranks_even_shards_and_ddp(tmp_path: Path) -> None:
    shards = [4, 4]
    data, ranks = _spawn(tmp_path, shards, with_ddp=True)
    _check_against_reference(data, ranks, shards)

    # DDP + converted model vs the plain model trained on the whole batch (mean loss).
    n = sum(shards)
    ref = _ddp_train(_ddp_model(), data["bn2d"]["xs"], _targets(n), 1.0 / n)
    initial = _ddp_model().state_dict()
    for key, want in ref.items():
        for r, got in enumerate(ranks):
            _close(got["ddp"][key].to(want.dtype), want, f"ddp {key} rank {r}")
        # The comparison has teeth: training moved every tensor, except the conv bias, whose
        # gradient BN cancels exactly (a per-channel shift is removed by the mean).
        if want.is_floating_point() and key != "0.bias":
            assert _max_diff(want, initial[key]) > 1e-4, key


def test_four_ranks_uneven_shards_with_empty_rank(tmp_path: Path) -> None:
    # A 1-sample shard (plain BN1d on (1, C) would raise) and an empty one (a tail batch).
    shards = [1, 3, 0, 4]
    data, ranks = _spawn(tmp_path, shards)
    _check_against_reference(data, ranks, shards)


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("shape", [(6, 3), (6, 3, 5), (6, 3, 4, 4)])
def test_without_process_group_equals_torch_batchnorm(
    momentum: float | None, shape: tuple[int, ...]
) -> None:
    assert not dist.is_initialized()
    ref_cls = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d}[len(shape)]
    torch.manual_seed(0)
    ref = ref_cls(3, momentum=momentum)
    ours = SyncBatchNorm(3, momentum=momentum)
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5)
        ref.bias.normal_()
    ours.load_state_dict(ref.state_dict())
    xs = [torch.randn(shape) * 2 + 1 for _ in range(STEPS)]
    gs = [torch.randn(shape) for _ in range(STEPS)]
    a = _run(ref, xs, gs, xs[0])
    b = _run(ours, xs, gs, xs[0])
    for key in ("y", "dx", "dw", "db"):
        for t in range(STEPS):
            torch.testing.assert_close(b[key][t], a[key][t], atol=0, rtol=0)
    for key in ("eval_y", "running_mean", "running_var", "nbt"):
        torch.testing.assert_close(b[key], a[key], atol=0, rtol=0)


def test_rejects_bad_input() -> None:
    bn = SyncBatchNorm(3)
    with pytest.raises(ValueError, match="at least 2D"):
        bn(torch.randn(3))
    with pytest.raises(ValueError, match="channels"):
        bn(torch.randn(4, 5))


def _small_model() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 2 * 2, 5),
        nn.BatchNorm1d(5, momentum=None),
    )


def test_convert_replaces_batchnorms_and_keeps_weights() -> None:
    torch.manual_seed(0)
    model = _small_model()
    model.train()
    model(torch.randn(6, 3, 4, 4))  # non-trivial running stats and num_batches_tracked
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 1.5)
    model[5].eval()  # the training flag must survive per layer
    before = copy.deepcopy(model.state_dict())
    params = {id(p) for p in model.parameters()}

    converted = convert_sync_batchnorm(model)

    types = [type(m) for m in converted]
    assert types == [nn.Conv2d, SyncBatchNorm, nn.ReLU, nn.Flatten, nn.Linear, SyncBatchNorm]
    assert not any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in converted.modules())
    assert converted[5].momentum is None and converted[1].momentum == 0.1
    assert converted[1].training and not converted[5].training
    # Same Parameter objects (an existing optimizer keeps working) and identical state.
    assert {id(p) for p in converted.parameters()} == params
    after = converted.state_dict()
    assert after.keys() == before.keys()
    for key in before:
        torch.testing.assert_close(after[key], before[key], atol=0, rtol=0)
    assert int(after["1.num_batches_tracked"]) == 1
    # Same function, too: eval outputs agree with the original model's.
    original = _small_model()
    original.load_state_dict(before)
    converted.eval()
    original.eval()
    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(converted(x), original(x), atol=0, rtol=0)


def test_convert_for_device_picks_implementation() -> None:
    cpu = convert_for_device(_small_model(), torch.device("cpu"))
    assert sum(isinstance(m, SyncBatchNorm) for m in cpu.modules()) == 2
    # Conversion (not running) of torch's version needs no GPU.
    cuda = convert_for_device(_small_model(), "cuda")
    assert sum(type(m) is nn.SyncBatchNorm for m in cuda.modules()) == 2
    assert not any(isinstance(m, SyncBatchNorm) for m in cuda.modules())
    # A bare BatchNorm yields a new module, as in torch.
    bn = nn.BatchNorm1d(3)
    assert isinstance(convert_sync_batchnorm(bn), SyncBatchNorm)
