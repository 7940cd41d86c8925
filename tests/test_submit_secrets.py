"""Secrets stay on the cluster when sweeps go through ``orch submit`` (issue 17).

A real Ray head (``ray start --head --block`` on free ports, its own temp dir and token)
whose environment holds a secret, ``MLFLOW_TRACKING_PASSWORD``, as a cluster's does, and
an operator allow-list admitting one harmless variable; an ``mlflow server`` on a sqlite
file with served artifacts in this test's temp dir. A config that reads the environment
(an override, a ``--config-dir`` study file) is refused by ``orch submit`` on the
submitter's machine (exit 2, one line, nothing submitted) and, when that check is bypassed
by submitting the same entrypoint with Ray's ``JobSubmissionClient``, by the driver on the
cluster: the job fails with the one line, and no byte of the store (sqlite file, artifacts,
report) holds the secret. The allow-list that counts is the cluster's: a submitter cannot
widen it through the job's ``runtime_env`` ``env_vars``, while a variable the operator
allowed is read (and found in the store: the scan can find what it looks for).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from orchestrator.cli.jobs import entrypoint, runtime_env, use_local_token
from orchestrator.config.safe_yaml import ALLOW_ENV, RAY_JOB_CONFIG_ENV
from tests.test_failures import user_conf
from tests.test_submit import (
    BIN,
    ROOT,
    free_port,
    orch,
    start_head,
    start_mlflow_server,
)

SECRET = f"pw-{secrets.token_hex(16)}"
NOTE = f"note-{secrets.token_hex(8)}"  # a variable the operator allows
JOB_TIMEOUT_S = 400  # a slow shared machine: several drivers start at once


@pytest.fixture
def store(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``mlflow server`` on a sqlite file, artifacts served from a folder; both under
    ``tmp_path/store``, whose every byte the test scans."""
    root = tmp_path / "store"
    (root / "artifacts").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_PASSWORD"}
    with start_mlflow_server(
        tmp_path, f"sqlite:///{root / 'mlflow.db'}", root / "artifacts", env
    ) as url:
        yield url, root


@pytest.fixture
def secret_head(tmp_path: Path) -> Iterator[dict]:
    """A Ray head whose environment holds the secret and the operator's allow-list."""
    temp_dir = Path("/tmp") / f"orch-secret-{secrets.token_hex(4)}"  # short socket paths
    token = tmp_path / "ray_token"
    token.write_text(secrets.token_hex(32))
    gcs, dash, metrics, agent = free_port(), free_port(), free_port(), free_port()
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", ALLOW_ENV)},
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(ROOT),  # the test's task plugins, on the head and its workers
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
        "MLFLOW_TRACKING_PASSWORD": SECRET,
        "ORCH_TEST_NOTE": NOTE,
        ALLOW_ENV: "oc.env:ORCH_TEST_NOTE",
    }
    with start_head(tmp_path, env, temp_dir, gcs, dash, metrics, agent):
        yield {"address": f"http://127.0.0.1:{dash}", "token": token}


@pytest.fixture
def token_restored(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Ray caches its token process-wide and the test points it at its head's: afterwards
    the environment is restored and the token read again, or this process's own Ray
    session (the suite's) would be called with the other head's token and its driver
    would exit (one CI run ended, without a summary, that way)."""
    from ray._raylet import AuthenticationTokenLoader

    yield
    monkeypatch.undo()
    AuthenticationTokenLoader.instance().reset_cache()


def _submitter_env(token: Path, **extra: str) -> dict[str, str]:
    """A submitter's machine: Ray's token, none of the cluster's variables."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MLFLOW_TRACKING_PASSWORD", "ORCH_TEST_NOTE", ALLOW_ENV, "RAY_ADDRESS")
    }
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token), COLUMNS="250", **extra)
    return env


def _confs(wd: Path) -> None:
    """``wd/ok``: a one-trial study of an instant plugin task; ``wd/leak``: the same with a
    study file that reads the secret."""
    for name in ("ok", "leak"):
        user_conf(wd / name, "boom", "secret", {"steps": 2}, {"seeds": 1, "metric": "final"})
    study = wd / "leak" / "conf" / "study" / "secret.yaml"
    cfg = yaml.safe_load(study.read_text())
    cfg["study"]["description"] = "${oc.env:MLFLOW_TRACKING_PASSWORD}"
    study.write_text("# @package _global_\n" + yaml.safe_dump(cfg, sort_keys=False))


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_env_resolvers_are_refused_through_submit_and_on_the_cluster(
    secret_head: dict,
    store: tuple[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    token_restored: None,
) -> None:
    from ray.job_submission import JobSubmissionClient

    address, (uri, root) = secret_head["address"], store
    wd = tmp_path / "wd"
    _confs(wd)
    leak = "study.description=${oc.env:MLFLOW_TRACKING_PASSWORD}"
    sub_env = _submitter_env(secret_head["token"])

    # 1. orch submit refuses on the submitter's machine: one line, exit 2, nothing sent.
    def submit(*args: str, env: dict[str, str] = sub_env) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "orch"), "submit", "secret", *args, "--address", address],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
            cwd=wd,
        )

    for args in (
        ["--config-dir", "ok/conf", leak],
        ["--config-dir", "leak/conf"],
    ):
        r = submit(*args, "--tasks", "tests.plugins.failing_tasks", "--tracking-uri", uri)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert r.stdout == "" and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "resolver 'oc.env'" in r.stderr and SECRET not in r.stderr
    jobs = orch(sub_env, "jobs", "--address", address)
    assert jobs.returncode == 0 and "orch-secret" not in jobs.stdout, jobs.stdout

    # 2. The same entrypoints submitted with Ray's client, as `orch submit` would without
    #    its check; plus a submitter widening the allow-list, plus what the operator allows.
    monkeypatch.chdir(wd)
    for k, v in _submitter_env(secret_head["token"]).items():
        monkeypatch.setenv(k, v)
    for k in ("MLFLOW_TRACKING_PASSWORD", "ORCH_TEST_NOTE", ALLOW_ENV, "RAY_AUTH_MODE"):
        monkeypatch.delenv(k, raising=False)
    # Ray read RAY_AUTH_MODE when this process imported it: turn token mode on as `orch
    # submit` does for a cluster on this machine (the token at RAY_AUTH_TOKEN_PATH).
    # Ray keeps the first token this process read (an earlier test's cluster): read again.
    from ray._raylet import AuthenticationTokenLoader

    AuthenticationTokenLoader.instance().reset_cache()
    assert use_local_token(address)
    client = JobSubmissionClient(address)

    def job(conf: str, overrides: list[str], env_vars: dict[str, str] | None = None) -> str:
        renv, remote = runtime_env(f"{conf}/conf", str(wd))
        if env_vars:
            renv["env_vars"] = env_vars
        cmd = entrypoint(
            "secret", overrides, uri, config_dir=remote, tasks=["tests.plugins.failing_tasks"]
        )
        deadline = time.monotonic() + 120
        while True:
            try:
                return client.submit_job(entrypoint=cmd, runtime_env=renv)
            except RuntimeError as e:  # a fresh head's job agent may not be registered yet
                if "No available agent" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(2)

    refused = {
        "override": job("ok", [leak]),
        "study file": job("leak", []),
        "submitter's allow-list": job("ok", [leak], {ALLOW_ENV: "oc.env"}),
        "submitter's allow-list, note": job(
            "ok", ["study.description=${oc.env:ORCH_TEST_NOTE}"], {ALLOW_ENV: "oc.env"}
        ),
    }
    allowed = job("ok", ["study.description=${oc.env:ORCH_TEST_NOTE}"])

    def wait(job_id: str) -> str:
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while time.monotonic() < deadline:
            status = str(client.get_job_status(job_id))
            if status.rsplit(".", 1)[-1] in ("SUCCEEDED", "FAILED", "STOPPED"):
                return status.rsplit(".", 1)[-1]
            time.sleep(2)
        pytest.fail(f"job {job_id} did not end: {client.get_job_logs(job_id)[-3000:]}")

    for what, job_id in refused.items():
        status, logs = wait(job_id), client.get_job_logs(job_id)
        assert status == "FAILED", (what, logs[-3000:])
        assert "exit code 2" in (client.get_job_info(job_id).message or ""), what
        # Ray's job log starts with its own lines, up to "Running entrypoint for job ...".
        lines = [line for line in logs.splitlines() if line.strip()]
        starts = [i for i, line in enumerate(lines) if line.startswith("Running entrypoint")]
        errors = lines[starts[-1] + 1 :] if starts else lines
        assert len(errors) == 1 and errors[0].startswith("error:"), (what, logs[-3000:])
        assert "Traceback" not in logs and SECRET not in logs
        if what.startswith("submitter"):
            assert f"{ALLOW_ENV}: set by the job's submitter" in errors[0], errors
        else:
            assert "resolver 'oc.env'" in errors[0], errors
    status = wait(allowed)
    logs = client.get_job_logs(allowed)
    assert status == "SUCCEEDED", logs[-3000:]
    assert "1 finished, 0 failed" in logs, logs[-3000:]

    # 3. Nothing in the store holds the secret; the allowed note is there (the scan works).
    def holding(value: str) -> list[str]:
        data = value.encode()
        return [
            str(p.relative_to(root))
            for p in sorted(root.rglob("*"))
            if p.is_file() and data in p.read_bytes()
        ]

    assert holding(SECRET) == []
    found = holding(NOTE)
    assert any(p.endswith("config.yaml") for p in found), found


def test_job_env_vars_are_read_from_rays_job_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the driver of a Ray Job sees: the submitter's env_vars in Ray's job config."""
    import json

    from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR

    from orchestrator.config.safe_yaml import allowed_resolvers, check_resolvers, job_env_vars
    from orchestrator.errors import SpecError

    assert RAY_JOB_CONFIG_ENV == RAY_JOB_CONFIG_JSON_ENV_VAR  # Ray's name, not imported
    monkeypatch.setenv(ALLOW_ENV, "oc.env:X")
    monkeypatch.delenv(RAY_JOB_CONFIG_ENV, raising=False)
    assert job_env_vars() == {} and allowed_resolvers() == {"oc.env:X"}
    config = {"runtime_env": {"env_vars": {"OTHER": "1"}}, "metadata": {}}
    monkeypatch.setenv(RAY_JOB_CONFIG_ENV, json.dumps(config))
    assert allowed_resolvers() == {"oc.env:X"}  # the operator's: the job did not set it
    config["runtime_env"]["env_vars"][ALLOW_ENV] = "oc.env"
    monkeypatch.setenv(RAY_JOB_CONFIG_ENV, json.dumps(config))
    with pytest.raises(SpecError, match="set by the job's submitter"):
        check_resolvers("${oc.env:X}", "overrides")
    check_resolvers("${a.b} ${oc.select:a.b}", "overrides")  # pure: no allow-list needed
    monkeypatch.setenv(RAY_JOB_CONFIG_ENV, "{not json")
    with pytest.raises(SpecError, match="set by the job's submitter"):
        allowed_resolvers()
