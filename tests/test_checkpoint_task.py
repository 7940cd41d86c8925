"""Task-side checkpoints: a trial stopped after epoch K and resumed from its Checkpoint
reports every epoch once and ends where an uninterrupted run ends.

Real torch on CPU, no Ray. One thread (the machine is shared, and a fixed thread count
keeps the order of floating-point reductions the same in both runs) and deterministic
algorithms, so an uninterrupted and a resumed run can be compared to float tolerance.
The models use dropout, so a resume that lost the RNG state would draw other masks.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp
import yaml
from pydantic import TypeAdapter

from tasks import data as datasets
from tasks import registry
from tasks.classify import ClassifySpec
from tasks.classify import run as classify
from tasks.distributed import DistContext
from tasks.events import Checkpoint, CheckpointError, Event, Metrics, Summary
from tasks.finetune import FinetuneSpec, save_checkpoint
from tasks.finetune import run as finetune
from tasks.models import build_model
from tasks.optimizers import build_optimizer
from tasks.schedules import SchedulerSpec, build_scheduler
from tasks.training import TrainSpec, fit

# Seconds to minutes each (training, subprocesses, simulation): not in `make test-fast`.
pytestmark = pytest.mark.slow

CLASSIFY: dict[str, Any] = {
    "data": {"name": "digits"},
    "model": {"name": "mlp_d", "hidden": [32], "dropout": 0.2},
    "optimizer": {"name": "adam", "lr": 3e-3},
    "scheduler": {"name": "cosine", "warmup_epochs": 1.0},  # scheduler state matters
    # No minimum interval: these trials take a second, and every epoch's checkpoint is wanted.
    "train": {"epochs": 5, "batch_size": 64, "checkpoint_min_interval_s": 0},
    "seed": 3,
}


@pytest.fixture(autouse=True)
def deterministic() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(False)
    torch.set_num_threads(threads)


def _classify_spec(**train: Any) -> ClassifySpec:
    return ClassifySpec.model_validate({**CLASSIFY, "train": {**CLASSIFY["train"], **train}})


def _until_checkpoint(events: Iterator[Event], step: int) -> tuple[list[Metrics], bytes]:
    """Consume ``events`` up to the Checkpoint of ``step``, then close the generator (what a
    preempted worker amounts to): the Metrics seen and that checkpoint's state."""
    metrics: list[Metrics] = []
    for event in events:
        if isinstance(event, Metrics):
            metrics.append(event)
        elif isinstance(event, Checkpoint) and event.step == step:
            events.close()  # type: ignore[attr-defined]
            return metrics, event.state
    raise AssertionError(f"no checkpoint at step {step}")


def _split(events: list[Event]) -> tuple[list[Metrics], list[Checkpoint], Summary]:
    *body, summary = events
    assert isinstance(summary, Summary) and summary.outcome == "finished"
    metrics = [e for e in body if isinstance(e, Metrics)]
    checkpoints = [e for e in body if isinstance(e, Checkpoint)]
    assert len(metrics) + len(checkpoints) == len(body)
    return metrics, checkpoints, summary


def _same_values(a: dict[str, float], b: dict[str, float]) -> None:
    # Wall-clock timings differ between any two runs; everything else must not.
    keys = {k for k in a if not k.startswith("time/")}
    assert keys == {k for k in b if not k.startswith("time/")}
    for k in keys:
        assert b[k] == pytest.approx(a[k], rel=1e-6, abs=1e-9), k


def _same_history(full: list[Metrics], pieces: list[Metrics]) -> None:
    assert [m.step for m in pieces] == [m.step for m in full] == list(range(len(full)))
    for a, b in zip(full, pieces):
        _same_values(a.values, b.values)


def test_resumed_classify_equals_uninterrupted() -> None:
    spec = _classify_spec(checkpoint_every=1)
    full, checkpoints, summary = _split(list(classify(spec)))
    assert [c.step for c in checkpoints] == [0, 1, 2, 3, 4]
    # Each Checkpoint comes right after the Metrics of its step.
    events = list(classify(spec))
    assert [(type(e).__name__, getattr(e, "step", None)) for e in events[:4]] == [
        ("Metrics", 0),
        ("Checkpoint", 0),
        ("Metrics", 1),
        ("Checkpoint", 1),
    ]

    before, state = _until_checkpoint(classify(spec), 2)
    after, _, resumed = _split(list(classify(spec, resume=state)))
    assert [m.step for m in after] == [3, 4]
    _same_history(full, before + after)
    _same_values(summary.values, resumed.values)


def test_checkpoint_cadence_and_off() -> None:
    _, checkpoints, _ = _split(list(classify(_classify_spec(checkpoint_every=2))))
    assert [c.step for c in checkpoints] == [1, 3]
    _, none, _ = _split(list(classify(_classify_spec(checkpoint_every=0))))
    assert none == []
    # The default minimum interval (a minute) outlasts this whole trial: no checkpoint.
    default = ClassifySpec.model_validate({**CLASSIFY, "train": {"epochs": 5}})
    assert default.train.checkpoint_every == 1
    _, none, _ = _split(list(classify(default)))
    assert none == []


def test_resume_may_change_runtime_fields_only() -> None:
    spec = _classify_spec(checkpoint_every=2)
    full, _, summary = _split(list(classify(spec)))
    before, state = _until_checkpoint(classify(spec), 1)
    # How often to checkpoint and on which device are not part of what the trial computes.
    after, checkpoints, resumed = _split(
        list(classify(_classify_spec(checkpoint_every=1, device="cpu"), resume=state))
    )
    assert [c.step for c in checkpoints] == [2, 3, 4]
    _same_history(full, before + after)
    _same_values(summary.values, resumed.values)

    with pytest.raises(
        CheckpointError,
        match=r"another trial config: optimizer\.lr: "
        r"checkpoint 0\.003, this trial 0\.01",
    ):
        next(
            classify(
                ClassifySpec.model_validate(
                    {**spec.model_dump(), "optimizer": {"name": "adam", "lr": 1e-2}}
                ),
                resume=state,
            )
        )


def _saved(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def test_unusable_checkpoints_raise_naming_the_problem() -> None:
    spec = _classify_spec()
    _, state = _until_checkpoint(classify(spec), 0)
    with pytest.raises(CheckpointError, match="not readable"):
        next(classify(spec, resume=state[: len(state) // 2]))  # a truncated upload
    with pytest.raises(CheckpointError, match="not readable"):
        next(classify(spec, resume=b"not a checkpoint"))
    with pytest.raises(CheckpointError, match="format 'orch.fit/0'"):
        next(classify(spec, resume=_saved({"format": "orch.fit/0"})))
    with pytest.raises(CheckpointError, match=r"format None"):
        next(classify(spec, resume=_saved([1, 2, 3])))
    ckpt = torch.load(io.BytesIO(state), weights_only=True)
    with pytest.raises(CheckpointError, match="trained by 2 rank"):
        next(classify(spec, resume=_saved({**ckpt, "world_size": 2})))

    # Same config, other model (a caller that builds a different net): the load fails.
    data = datasets.load(spec.data)
    other = build_model(
        spec.model.model_copy(update={"hidden": [16]}), data.input_shape, data.num_classes
    )
    events = fit(
        other,
        data,
        build_optimizer(other.parameters(), spec.optimizer),
        None,
        spec.train,
        spec.seed,
        torch.device("cpu"),
        resume=state,
        config=ckpt["config"],
    )
    with pytest.raises(CheckpointError, match="does not fit this trial's model"):
        next(events)


def test_divergence_reference_survives_a_resume() -> None:
    # The divergence test compares with the run's first batch loss, not the resumed
    # attempt's: a checkpoint whose reference is tiny makes the next batch "diverge".
    spec = _classify_spec()
    _, state = _until_checkpoint(classify(spec), 1)
    ckpt = torch.load(io.BytesIO(state), weights_only=True)
    assert ckpt["progress"]["first_loss"] == pytest.approx(2.3, abs=0.2)  # ~ln(10) at init
    ckpt["progress"]["first_loss"] = 1e-6
    events = list(classify(spec, resume=_saved(ckpt)))
    assert len(events) == 1 and isinstance(events[0], Summary)
    assert events[0].outcome == "diverged" and "at epoch 2" in events[0].reason


def test_default_checkpoint_every_keeps_old_trial_keys() -> None:
    # Trial keys hash the dumped spec: the default must not appear, other values must.
    assert not {"checkpoint_every", "checkpoint_min_interval_s"} & set(TrainSpec().model_dump())
    dumped = TrainSpec(checkpoint_every=0, checkpoint_min_interval_s=5).model_dump(mode="json")
    assert (dumped["checkpoint_every"], dumped["checkpoint_min_interval_s"]) == (0, 5)
    assert TrainSpec.model_validate(dumped) == TrainSpec(
        checkpoint_every=0, checkpoint_min_interval_s=5
    )


def test_registry_reports_which_tasks_resume() -> None:
    assert registry.accepts(registry.get("classify").run, "resume")
    assert registry.accepts(registry.get("classify").run, "dist")
    assert registry.accepts(registry.get("finetune").run, "resume")
    assert registry.accepts(registry.get("pretrain").run, "resume")
    assert not registry.accepts(registry.get("finetune").run, "dist")
    assert not registry.accepts(len, "resume")


def test_finetune_resumes_across_the_unfreeze() -> None:
    model = {"name": "cnn_d", "channels": [4, 8], "dropout": 0.2}
    pretrain = {
        "data": {"name": "digits", "classes": [0, 1, 2, 3, 4]},
        "model": model,
        "optimizer": {"name": "adam", "lr": 1e-2},
        "scheduler": {"name": "constant"},
        "train": {"epochs": 1},
    }
    spec = FinetuneSpec.model_validate(
        {
            "data": {"name": "digits", "classes": [5, 6, 7, 8, 9], "per_class": 20},
            "model": model,
            "optimizer": {"name": "adam", "lr": 1e-2},
            "scheduler": {"name": "constant"},
            "pretrain": pretrain,
            "strategy": {"name": "gradual", "head_epochs": 2},
            "train": {"epochs": 4, "batch_size": 16, "checkpoint_min_interval_s": 0},
        }
    )
    # Untrained weights stand in for the pretrain run: resume does not care what they learnt.
    torch.manual_seed(0)
    upstream = {"checkpoint.pt": save_checkpoint(build_model(spec.pretrain.model, (1, 8, 8), 5))}
    full, _, summary = _split(list(finetune(spec, upstream=upstream)))
    before, state = _until_checkpoint(finetune(spec, upstream=upstream), 0)
    after, _, resumed = _split(list(finetune(spec, upstream=upstream, resume=state)))
    # Resumed in the head-only phase, the backbone unfreezes at epoch 2 as it did before.
    assert [m.values["backbone/frozen_blocks"] for m in after] == [2.0, 0.0, 0.0]
    _same_history(full, before + after)
    _same_values(summary.values, resumed.values)
    assert resumed.artifacts == summary.artifacts


def _rank(rank: int, world: int, tmp: str) -> None:
    torch.set_num_threads(1)
    torch_dist.init_process_group(
        "gloo",
        init_method=f"file://{tmp}/store",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=60),
    )
    ctx = DistContext(rank, world, "gloo")
    # A small training set: every step is a collective, and the machine is shared.
    spec = ClassifySpec.model_validate(
        {**_classify_spec().model_dump(), "data": {"name": "digits", "per_class": 40}}
    )
    out: dict[str, Any] = {"full": list(classify(spec, dist=ctx))}
    # Every rank stops at the same event, as the orchestrator's per-event stop vote does.
    before, state = _until_checkpoint(classify(spec, dist=ctx), 1)
    out["before"], out["state"] = before, state
    torch_dist.broadcast_object_list(box := [state], src=0)  # the runner hands rank 0's bytes
    out["after"] = list(classify(spec, dist=ctx, resume=box[0]))
    torch.save(out, f"{tmp}/rank{rank}.pt")
    torch_dist.destroy_process_group()


def test_two_ranks_resume_from_rank_zeros_checkpoint(tmp_path: Path) -> None:
    mp.spawn(_rank, args=(2, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for r, out in enumerate(ranks):
        full, checkpoints, summary = _split(out["full"])
        # Every rank yields every Checkpoint; only rank 0's carries the state.
        assert [c.step for c in checkpoints] == [0, 1, 2, 3, 4]
        assert all((len(c.state) > 0) == (r == 0) for c in checkpoints)
        after, _, resumed = _split(out["after"])
        assert [m.step for m in after] == [2, 3, 4]
        _same_history(full, out["before"] + after)
        _same_values(summary.values, resumed.values)
    assert ranks[1]["state"] == b""
    _same_values(_split(ranks[0]["after"])[2].values, _split(ranks[1]["after"])[2].values)


CONF_SCHEDULERS = Path(__file__).resolve().parent.parent / "conf" / "scheduler"
SCHEDULERS = sorted(p.stem for p in CONF_SCHEDULERS.glob("*.yaml"))


@pytest.mark.parametrize("warmup", [0.0, 1.0])
@pytest.mark.parametrize("name", SCHEDULERS)
def test_every_scheduler_resumes_from_its_saved_state(name: str, warmup: float) -> None:
    # Every family's state must survive torch.load(weights_only=True) (which refuses
    # arbitrary objects) and continue the same LR sequence in a fresh scheduler.
    raw = yaml.safe_load((CONF_SCHEDULERS / f"{name}.yaml").read_text())
    spec = TypeAdapter(SchedulerSpec).validate_python({**raw, "warmup_epochs": warmup})

    def fresh() -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
        opt = torch.optim.SGD(
            [{"params": params[:1], "lr": 0.1}, {"params": params[1:], "lr": 0.01}], momentum=0.9
        )
        return opt, build_scheduler(opt, spec, steps_per_epoch=7, epochs=6)

    def lrs(opt: torch.optim.Optimizer, sched: Any, n: int) -> list[float]:
        out = []
        for _ in range(n):
            opt.step()
            sched.step()
            out += [g["lr"] for g in opt.param_groups]
        return out

    opt, sched = fresh()
    lrs(opt, sched, 16)
    state = torch.load(
        io.BytesIO(_saved({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()})),
        weights_only=True,
    )
    expected = lrs(opt, sched, 20)
    opt2, sched2 = fresh()
    opt2.load_state_dict(state["optimizer"])
    sched2.load_state_dict(state["scheduler"])
    assert lrs(opt2, sched2, 20) == pytest.approx(expected, rel=1e-12)
