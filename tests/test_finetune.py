"""Fine-tuning: the pieces (freezing, LR groups, gradual unfreezing, drift, checkpoints) on
real torch, then a small ``finetune`` sweep end to end on real Ray and a sqlite MLflow store:
one pretrain run, shared by every fine-tune trial and reused by a later sweep."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from mlflow.tracking import MlflowClient
from pydantic import ValidationError

from orchestrator.cli import main
from tasks import data as datasets
from tasks.events import Metrics, Summary
from tasks.finetune import (
    CHECKPOINT,
    SOURCE,
    FinetuneSpec,
    Freezer,
    PretrainSpec,
    backbone_blocks,
    build_finetune_model,
    load_checkpoint,
    needs_pretrain,
    param_groups,
    pretrain,
    run,
    save_checkpoint,
)
from tasks.optimizers import build_optimizer
from tasks.training import fit

torch.set_num_threads(1)  # the machine is shared; these models are tiny

MODEL = {"name": "cnn_d", "channels": [4, 8]}
PRETRAIN: dict[str, Any] = {
    "data": {"name": "digits", "classes": [0, 1, 2, 3, 4]},
    "model": MODEL,
    "optimizer": {"name": "adam", "lr": 1e-2},
    "scheduler": {"name": "constant"},
    "train": {"epochs": 2, "batch_size": 64},
    "seed": 0,
}


def _spec(
    strategy: dict[str, Any], epochs: int = 4, per_class: int = 20, **extra: Any
) -> FinetuneSpec:
    return FinetuneSpec.model_validate(
        {
            "data": {"name": "digits", "classes": [5, 6, 7, 8, 9], "per_class": per_class},
            "model": MODEL,
            "optimizer": {"name": "adam", "lr": 1e-2},
            "scheduler": {"name": "constant"},
            "strategy": strategy,
            "pretrain": PRETRAIN,
            "train": {"epochs": epochs, "batch_size": 16},
            "seed": 0,
            **extra,
        }
    )


@pytest.fixture(scope="module")
def upstream() -> dict[str, bytes]:
    """The artifacts of one real (short) pretrain run."""
    events = list(pretrain(PretrainSpec.model_validate(PRETRAIN)))
    summary = events[-1]
    assert isinstance(summary, Summary) and summary.outcome == "finished"
    assert [e.step for e in events[:-1]] == [0, 1]
    return summary.artifacts


def _events(spec: FinetuneSpec, upstream: dict[str, bytes] | None) -> tuple[list[Metrics], Summary]:
    events = list(run(spec, upstream=upstream))
    *metrics, summary = events
    assert isinstance(summary, Summary) and all(isinstance(m, Metrics) for m in metrics)
    return metrics, summary


def test_checkpoint_round_trips_and_head_is_reinitialised(upstream: dict[str, bytes]) -> None:
    state = load_checkpoint(upstream[CHECKPOINT])
    assert state["head.weight"].shape == (5, 8)  # the source's 5-way head
    # Bytes -> state_dict -> bytes -> state_dict is the identity, BN buffers included.
    again = load_checkpoint(save_checkpoint(_model_from(state)))
    assert state.keys() == again.keys()
    assert all(torch.equal(state[k], again[k]) for k in state)
    assert any("running_mean" in k for k in state)

    spec = _spec({"name": "full"})
    model = build_finetune_model(spec, datasets.load(spec.data), state)
    tuned = model.state_dict()
    for k, v in state.items():
        if k.startswith("features."):
            assert torch.equal(tuned[k], v), k
    # A fresh head for the 5 target classes, not the source's head.
    assert tuned["head.weight"].shape == (5, 8)
    assert not torch.equal(tuned["head.weight"], state["head.weight"])


def _model_from(state: dict[str, torch.Tensor]) -> torch.nn.Module:
    from tasks.models import CNNSpec, build_model

    model = build_model(CNNSpec.model_validate(MODEL), (1, 8, 8), 5)
    model.load_state_dict(state)
    return model


def test_frozen_weights_and_bn_statistics_do_not_change(upstream: dict[str, bytes]) -> None:
    spec = _spec({"name": "head_only"}, epochs=3)
    data = datasets.load(spec.data)
    model = build_finetune_model(spec, data, load_checkpoint(upstream[CHECKPOINT]))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = build_optimizer(param_groups(model, spec), spec.optimizer)
    events = list(
        fit(
            model,
            data,
            optimizer,
            None,
            spec.train,
            0,
            torch.device("cpu"),
            on_epoch_start=Freezer(model, spec.strategy, spec.train.epochs),
        )
    )
    assert isinstance(events[-1], Summary) and events[-1].outcome == "finished"
    after = model.state_dict()
    for k in before:
        if k.startswith("features."):  # weights, biases, running stats, batch counters
            assert torch.equal(before[k], after[k]), f"frozen {k} changed"
    assert not torch.equal(before["head.weight"], after["head.weight"]), "the head did not train"


def test_each_parameter_group_gets_its_lr(upstream: dict[str, bytes]) -> None:
    spec = _spec({"name": "discriminative", "lr_multiple": 0.1, "head_lr_ratio": 10.0})
    model = build_finetune_model(spec, datasets.load(spec.data), None)
    groups = param_groups(model, spec)
    optimizer = build_optimizer(groups, spec.optimizer)
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert lrs == pytest.approx({"backbone": 1e-3, "head": 1e-2})
    # The groups partition the model's parameters.
    grouped = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())
    head_ids = {id(p) for p in model.head.parameters()}
    assert {id(p) for p in optimizer.param_groups[1]["params"]} == head_ids

    for strategy, expect in [
        ({"name": "full", "lr_multiple": 0.01}, (1e-4, 1e-4)),
        ({"name": "scratch"}, (1e-2, 1e-2)),
        ({"name": "discriminative", "lr_multiple": 0.01, "head_lr_ratio": 100.0}, (1e-4, 1e-2)),
    ]:
        g = param_groups(model, _spec(strategy))
        assert (g[0]["lr"], g[1]["lr"]) == pytest.approx(expect), strategy

    # The running task reports the groups' LRs every epoch.
    metrics, _ = _events(
        _spec({"name": "discriminative", "head_lr_ratio": 100.0}, epochs=2), upstream
    )
    assert [m.values["lr/backbone"] for m in metrics] == pytest.approx([1e-3, 1e-3])
    assert [m.values["lr/head"] for m in metrics] == pytest.approx([1e-1, 1e-1])


@pytest.mark.parametrize("unfreeze,frozen_after", [("all", 0), ("top_half", 1)])
def test_gradual_unfreezes_at_the_right_epoch(
    upstream: dict[str, bytes], unfreeze: str, frozen_after: int
) -> None:
    spec = _spec({"name": "gradual", "head_epochs": 2, "unfreeze": unfreeze}, epochs=4)
    metrics, summary = _events(spec, upstream)
    assert [m.values["backbone/frozen_blocks"] for m in metrics] == [
        2,
        2,
        frozen_after,
        frozen_after,
    ]
    drifts = [m.values["backbone/drift"] for m in metrics]
    assert drifts[0] == drifts[1] == 0.0  # head phase: the backbone is the checkpoint
    assert 0.0 < drifts[2] < drifts[3]
    assert summary.values["backbone/drift"] == pytest.approx(drifts[3])

    # top_half trains the upper block only: the bottom one is the checkpoint's at the end.
    data = datasets.load(spec.data)
    state = load_checkpoint(upstream[CHECKPOINT])
    model = build_finetune_model(spec, data, state)
    bottom, top = backbone_blocks(model)
    start = [p.detach().clone() for p in bottom.parameters()]
    top_start = [p.detach().clone() for p in top.parameters()]
    optimizer = build_optimizer(param_groups(model, spec), spec.optimizer)
    list(
        fit(
            model,
            data,
            optimizer,
            None,
            spec.train,
            0,
            torch.device("cpu"),
            on_epoch_start=Freezer(model, spec.strategy, spec.train.epochs),
        )
    )
    bottom_moved = any(not torch.equal(a, b) for a, b in zip(start, bottom.parameters()))
    top_moved = any(not torch.equal(a, b) for a, b in zip(top_start, top.parameters()))
    assert bottom_moved == (unfreeze == "all") and top_moved


def test_default_head_phase_is_a_third_of_the_run() -> None:
    spec = _spec({"name": "gradual"}, epochs=9)
    model = build_finetune_model(spec, datasets.load(spec.data), None)
    freezer = Freezer(model, spec.strategy, 9)
    assert [len(freezer.frozen_at(e)) for e in range(9)] == [2, 2, 2] + [0] * 6


def test_a_warmup_before_the_run_gives_the_backbone_every_epoch_of_it(
    upstream: dict[str, bytes],
) -> None:
    # FT-3's fair arm: the head-only phase runs ahead of train.epochs, so the backbone trains
    # all of them, as strategy A's does; `within` takes the phase out of them.
    frozen = {}
    for warmup in ("before", "within"):
        spec = _spec({"name": "gradual", "head_epochs": 1, "warmup": warmup}, epochs=3)
        metrics, summary = _events(spec, upstream)
        assert summary.outcome == "finished"
        frozen[warmup] = [m.values["backbone/frozen_blocks"] for m in metrics]
    assert frozen["before"] == [2.0, 0.0, 0.0, 0.0]  # 1 head epoch, then 3 with the backbone
    assert frozen["within"] == [2.0, 0.0, 0.0]
    assert _spec({"name": "gradual", "head_epochs": 1, "warmup": "before"}, epochs=3).cost() == 4
    # at its default the new field stays out of the trial's key
    assert "warmup" not in _spec({"name": "gradual"}).model_dump()["strategy"]


def test_head_only_drift_is_zero_and_scratch_needs_no_checkpoint(
    upstream: dict[str, bytes],
) -> None:
    metrics, summary = _events(_spec({"name": "head_only"}, epochs=3), upstream)
    assert summary.outcome == "finished"
    assert summary.values["backbone/drift"] == 0.0
    assert all(m.values["backbone/drift"] == 0.0 for m in metrics)
    assert 0.0 <= summary.values["test/acc"] <= 1.0
    source = json.loads(summary.artifacts[SOURCE])
    assert source["sha256"] == hashlib.sha256(upstream[CHECKPOINT]).hexdigest()

    _, full = _events(_spec({"name": "full"}, epochs=3), upstream)
    assert full.values["backbone/drift"] > 0.0

    scratch = _spec({"name": "scratch"}, epochs=2)
    assert needs_pretrain(scratch) is None
    _, summary = _events(scratch, None)
    assert summary.outcome == "finished" and json.loads(summary.artifacts[SOURCE])["task"] is None
    with pytest.raises(ValueError, match="checkpoint.pt"):
        list(run(_spec({"name": "full"}), upstream=None))


def test_spec_rejects_inconsistent_configs() -> None:
    name, config = needs_pretrain(_spec({"name": "full"}))
    assert name == "pretrain" and config == PretrainSpec.model_validate(PRETRAIN).model_dump(
        mode="json"
    )
    with pytest.raises(ValidationError, match="head_epochs"):
        _spec({"name": "gradual", "head_epochs": 4}, epochs=4)
    with pytest.raises(ValidationError, match="pretrain.model"):
        _spec({"name": "full"}, model={"name": "cnn_d", "channels": [16, 32]})
    with pytest.raises(ValidationError, match="head_lr_ratio"):
        _spec({"name": "full", "head_lr_ratio": 10.0})  # full has one LR: no ratio to set


# ------------------------------------------------------------------- end to end


def test_study_is_listed_with_its_claims(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["studies"]) == 0
    # The console may wrap a long line: compare with the whitespace collapsed.
    text = " ".join(capsys.readouterr().out.split())
    assert "finetune CNN-d pre-trained" in text
    assert "claims: FT-1, FT-2, FT-3, FT-4, FT-5, FT-6" in text
    assert main(["sweep", "finetune", "--dry-run"]) == 0
    assert main(["sweep", "finetune", "--quick", "--dry-run"]) == 0


#: A small slice of the study: only the `similar` grid at 5/class, three strategies.
SWEEP = [
    "finetune",
    "~sweep.grids.different",
    "~sweep.grids.ratio",
    "~sweep.grids.lr",
    "~sweep.grids.warmup",
    'sweep.grids.similar={data.per_class: "5", strategy: "scratch,head_only,gradual_all"}',
    "sweep.seeds=1",
    "train.epochs=3",
    "train.batch_size=32",
    "pretrain.train.epochs=2",
    "model.channels=[4,8]",
]


def _runs(ml: MlflowClient, kind: str) -> list[Any]:
    exp = ml.get_experiment_by_name("finetune")
    return ml.search_runs([exp.experiment_id], f"tags.`orch.kind` = '{kind}'")


def _artifact(ml: MlflowClient, run_id: str, path: str, tmp: Path) -> bytes:
    return Path(ml.download_artifacts(run_id, path, str(tmp))).read_bytes()


def test_finetune_sweep_trains_pretrain_once_and_reuses_it(
    ray_session, tracking_uri: str, tmp_path: Path
) -> None:
    assert main(["sweep", *SWEEP, "--tracking-uri", tracking_uri]) == 0
    ml = MlflowClient(tracking_uri)
    (pre,) = _runs(ml, "upstream")  # exactly one pre-training run
    assert pre.data.tags["orch.outcome"] == "finished"
    assert pre.data.params["data.classes"] == "[0, 1, 2, 3, 4]"
    digest = hashlib.sha256(
        _artifact(ml, pre.info.run_id, f"outputs/{CHECKPOINT}", tmp_path / "pre")
    ).hexdigest()

    def check_children(runs: list[Any], where: str) -> None:
        for r in runs:
            assert r.data.tags["orch.outcome"] == "finished", r.data.tags.get("orch.error")
            source = json.loads(
                _artifact(ml, r.info.run_id, f"outputs/{SOURCE}", tmp_path / where / r.info.run_id)
            )
            if r.data.params["strategy.name"] == "scratch":
                assert source["task"] is None
                assert "orch.upstream_key" not in r.data.tags
            else:  # the checkpoint it started from is the pretrain run's artifact
                assert source["sha256"] == digest
                assert r.data.tags["orch.upstream_key"] == pre.data.tags["orch.trial_key"]
                assert source["config"]["data"]["classes"] == [0, 1, 2, 3, 4]
            assert "backbone/drift" in r.data.metrics
            assert len(ml.get_metric_history(r.info.run_id, "val/acc")) == 3

    first = _runs(ml, "trial")
    assert sorted(r.data.params["strategy.name"] for r in first) == [
        "gradual",
        "head_only",
        "scratch",
    ]
    check_children(first, "first")

    # New fine-tune trials (another seed) that need the same pretrain: reused, not retrained.
    assert main(["sweep", *SWEEP, "seed=1", "--tracking-uri", tracking_uri]) == 0
    assert [r.info.run_id for r in _runs(ml, "upstream")] == [pre.info.run_id]
    second = [r for r in _runs(ml, "trial") if r.info.run_id not in {f.info.run_id for f in first}]
    assert len(second) == 3 and all(r.data.params["seed"] == "1" for r in second)
    check_children(second, "second")
