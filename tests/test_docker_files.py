"""The deployment files parse and agree with the code: compose, Dockerfiles, Prometheus and
Grafana provisioning, and the Grafana dashboards (no Docker engine needed).

What is checked is what breaks a deployment silently: a long-running service without a
health check, a volume used but not declared (or data not on a named volume), a secret
written into a file, a torch pin outside pyproject's range, a dashboard querying a metric
name that orchestrator/runtime/metrics.py does not export.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

from orchestrator.runtime import metrics

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
DASHBOARDS = ROOT / "dashboards" / "grafana"

LONG_RUNNING = (
    "postgres",
    "mlflow",
    "ray-head",
    "ray-worker",
    "ray-gpu-worker",
    "prometheus",
    "grafana",
)
#: Named volume -> (service, mount path) that must hold it: the data that survives a restart.
PERSISTENT = {
    "pgdata": ("postgres", "/var/lib/postgresql/data"),
    "mlflow-artifacts": ("mlflow", "/mlflow/artifacts"),
    "grafana-data": ("grafana", "/var/lib/grafana"),
    "prometheus-data": ("prometheus", "/prometheus"),
}
SECRET_KEY = re.compile(r"(PASSWORD|SECRET|TOKEN)", re.I)
INTERPOLATION = re.compile(r"^\$\{[A-Z0-9_]+(:?[-?][^}]*)?\}$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def pyproject_requirement(name: str) -> Requirement:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return next(r for r in map(Requirement, deps) if r.name == name)


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def volume_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    out = []
    for v in service.get("volumes", []):
        if isinstance(v, dict):
            out.append((v["source"], v["target"]))
        else:
            source, target = v.split(":")[:2]
            out.append((source, target))
    return out


def test_compose_services_and_healthchecks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(LONG_RUNNING) <= set(services)
    for name in LONG_RUNNING:
        check = services[name].get("healthcheck")
        assert check and check.get("test") and not check.get("disable"), f"{name}: no healthcheck"
        test = check["test"]
        assert test[0] in ("CMD", "CMD-SHELL"), f"{name}: healthcheck {test}"


def test_compose_depends_on_healthy(compose: dict[str, Any]) -> None:
    services = compose["services"]
    expected = {
        "mlflow": "postgres",
        "ray-head": "mlflow",
        "ray-worker": "ray-head",
        "ray-gpu-worker": "ray-head",
        "prometheus": "ray-head",
        "grafana": "prometheus",
    }
    for name, dep in expected.items():
        depends = services[name]["depends_on"]
        assert depends[dep]["condition"] == "service_healthy", f"{name} -> {dep}"
        for other, cond in depends.items():
            assert other in services and cond["condition"] == "service_healthy"


def test_compose_named_volumes_declared_and_used(compose: dict[str, Any]) -> None:
    declared = set(compose["volumes"])
    used = set()
    for name, svc in compose["services"].items():
        for source, _ in volume_mounts(svc):
            if not source.startswith((".", "/")):  # a named volume, not a bind mount
                assert source in declared, f"{name}: volume {source!r} is not declared"
                used.add(source)
    assert declared == used, f"declared but unused: {declared - used}"
    for volume, (service, path) in PERSISTENT.items():
        assert (volume, path) in volume_mounts(compose["services"][service]), volume
    # Bind mounts point at files of this repository.
    compose_dir = DOCKER
    for svc in compose["services"].values():
        for source, _ in volume_mounts(svc):
            if source.startswith("."):
                assert (compose_dir / source).exists(), source


def test_compose_images_and_builds(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, svc in services.items():
        assert "image" in svc or "build" in svc, name
        build = svc.get("build")
        if build:
            context = (DOCKER / build["context"]).resolve()
            dockerfile = context / build.get("dockerfile", "Dockerfile")
            assert dockerfile.is_file(), f"{name}: {dockerfile}"
        elif ":" in svc["image"]:
            assert not svc["image"].endswith(":latest"), f"{name}: pin the image tag"
    assert services["ray-worker"]["deploy"]["replicas"]
    assert services["ray-head"]["build"]["args"]["TORCH_VARIANT"] == "cpu"
    assert services["ray-gpu-worker"]["build"]["args"]["TORCH_VARIANT"].startswith("${")
    # Ray's dashboard / Job API and metrics port as the rest of the stack expects them.
    head_cmd = services["ray-head"]["command"]
    assert "--dashboard-port=8265" in head_cmd and "--metrics-export-port=8080" in head_cmd
    assert any(p.endswith(":8265:8265") for p in services["ray-head"]["ports"])


def test_compose_gpu_worker_reserves_nvidia_gpus(compose: dict[str, Any]) -> None:
    gpu = compose["services"]["ray-gpu-worker"]
    assert gpu["profiles"] == ["gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices and devices[0]["driver"] == "nvidia"
    assert devices[0]["capabilities"] == ["gpu"]
    # Not a GPU service in the default profile: CPU-only hosts can `compose up`.
    for name, svc in compose["services"].items():
        if name != "ray-gpu-worker":
            assert "gpu" not in json.dumps(svc.get("deploy", {})), name


def test_compose_has_no_literal_secrets(compose: dict[str, Any]) -> None:
    text = (DOCKER / "compose.yaml").read_text()
    for name, svc in compose["services"].items():
        for key, value in env_of(svc).items():
            if SECRET_KEY.search(key):
                assert INTERPOLATION.match(value), f"{name}: {key} is not a ${{VAR}} reference"
                if "PASSWORD" in key or "TOKEN" in key or "SECRET" in key:
                    assert ":?" in value, f"{name}: {key} should be required (${{VAR:?}})"
        for key, value in env_of(svc).items():  # credentials inside URIs
            for userinfo in re.findall(r"://([^@/\s]+)@", value):
                assert all(part.startswith("${") for part in userinfo.split(":")), (name, key)
        if any(SECRET_KEY.search(k) for k in env_of(svc)):
            assert svc.get("env_file") == ".env", f"{name}: credentials without env_file"
    # The documented variables cover every required interpolation.
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    required = set(re.findall(r"\$\{([A-Z0-9_]+):\?", body))
    example = (DOCKER / ".env.example").read_text()
    documented = set(re.findall(r"^#?\s*([A-Z0-9_]+)=", example, re.M))
    assert required and required <= documented, required - documented
    # .env.example holds names, never values, for the secrets.
    for line in example.splitlines():
        m = re.match(r"^([A-Z0-9_]+)=(.*)$", line)
        if m and SECRET_KEY.search(m.group(1)):
            assert m.group(2) == "", f".env.example sets {m.group(1)}"


def test_no_secret_values_in_any_docker_file() -> None:
    """Every YAML/INI in docker/ and the provisioning: no key like password holds a value."""
    for path in [*DOCKER.rglob("*.yml"), *DOCKER.rglob("*.yaml"), *DOCKER.rglob("*.ini")]:
        for line in path.read_text().splitlines():
            if line.lstrip().startswith(("#", ";")):
                continue
            m = re.match(
                r"^\s*-?\s*([A-Za-z0-9_]*(?:password|secret|token)[A-Za-z0-9_]*)"
                r"\s*[:=]\s*(.*)$",
                line,
                re.I,
            )
            if m and m.group(2).strip():
                assert m.group(2).strip().startswith("${"), f"{path.name}: {line.strip()}"


def dockerfile_args(path: Path) -> dict[str, str]:
    return dict(re.findall(r"^ARG\s+([A-Z_]+)=(\S+)", path.read_text(), re.M))


def test_ray_dockerfile_base_and_torch_pin() -> None:
    path = DOCKER / "Dockerfile"
    text = path.read_text()
    froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert froms == ["python:${PYTHON_VERSION}-slim-bookworm"]
    args = dockerfile_args(path)
    assert args["TORCH_VARIANT"] == "cpu"
    torch = Version(args["TORCH_VERSION"])
    assert torch in pyproject_requirement("torch").specifier, (torch, "pyproject torch range")
    make_pin = re.search(r'"torch==([^"]+)"', (ROOT / "Makefile").read_text())
    assert make_pin and Version(make_pin.group(1)) == torch, "Makefile and image torch differ"
    assert re.search(r"download\.pytorch\.org/whl/\$\{TORCH_VARIANT\}", text)
    assert "torch==${TORCH_VERSION}" in text
    # The project is installed editable so conf/ sits next to the package (compose.py).
    assert re.search(r"pip install -e \.", text)
    assert "builtin_config_dir" in text


def test_mlflow_image_matches_client_version() -> None:
    path = DOCKER / "mlflow" / "Dockerfile"
    args = dockerfile_args(path)
    version = Version(args["MLFLOW_VERSION"])
    assert version in pyproject_requirement("mlflow").specifier
    assert re.findall(r"^FROM\s+(\S+)", path.read_text(), re.M) == ["python:3.11-slim-bookworm"]
    compose_cmd = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]["mlflow"]
    assert compose_cmd["build"]["args"]["MLFLOW_VERSION"] == args["MLFLOW_VERSION"]
    cmd = compose_cmd["command"]
    assert "--serve-artifacts" in cmd and "basic-auth" in cmd
    assert cmd[cmd.index("--artifacts-destination") + 1] == "/mlflow/artifacts"
    assert env_of(compose_cmd)["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://")
    import configparser

    ini = configparser.ConfigParser()
    ini.read(DOCKER / "mlflow" / "basic_auth.ini")
    assert ini["mlflow"]["database_uri"].startswith("sqlite:////mlflow/auth/")
    assert "admin_password" not in ini["mlflow"]


def test_prometheus_scrapes_ray_service_discovery(compose: dict[str, Any]) -> None:
    cfg = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    ray_job = next(j for j in cfg["scrape_configs"] if j["job_name"] == "ray")
    files = ray_job["file_sd_configs"][0]["files"]
    assert files == ["/tmp/ray/prom_metrics_service_discovery.json"]
    # The file is where the head writes it: its /tmp/ray volume, mounted into prometheus.
    head = dict((t, s) for s, t in volume_mounts(compose["services"]["ray-head"]))
    prom = dict((t.split(":")[0], s) for s, t in volume_mounts(compose["services"]["prometheus"]))
    assert head["/tmp/ray"] == prom["/tmp/ray"]


def test_grafana_provisioning(compose: dict[str, Any]) -> None:
    prov = DOCKER / "grafana" / "provisioning"
    ds = yaml.safe_load((prov / "datasources" / "prometheus.yaml").read_text())
    source = ds["datasources"][0]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    boards = yaml.safe_load((prov / "dashboards" / "orch.yaml").read_text())
    path = boards["providers"][0]["options"]["path"]
    mounts = dict(
        (t.removesuffix(":ro"), s) for s, t in volume_mounts(compose["services"]["grafana"])
    )
    assert (DOCKER / mounts[path]).resolve() == DASHBOARDS.resolve()
    # Every dashboard queries the provisioned datasource by its uid.
    for board in DASHBOARDS.glob("*.json"):
        for panel in json.loads(board.read_text())["panels"]:
            assert panel["datasource"]["uid"] == source["uid"], (board.name, panel["title"])


def exprs(board: dict[str, Any]) -> dict[str, list[str]]:
    return {p["title"]: [t["expr"] for t in p["targets"]] for p in board["panels"]}


def test_dashboards_valid_with_required_panels() -> None:
    boards = sorted(DASHBOARDS.glob("*.json"))
    assert boards
    board = json.loads((DASHBOARDS / "orch-service.json").read_text())
    panels = exprs(board)
    for title in (
        "Trials running",
        "Trials finished",
        "Trials failed",
        "Trial throughput",
        "Queue wait",
        "GPU utilization per node",
        "Node CPU",
        "Node memory",
    ):
        assert title in panels and panels[title], title
    assert "ray_orch_trials_running" in panels["Trials running"][0]
    assert 'outcome="finished"' in panels["Trials finished"][0]
    assert "failed" in panels["Trials failed"][0]
    assert "rate(ray_orch_trials_total" in panels["Trial throughput"][0]
    assert all("ray_orch_trial_queue_wait_seconds" in e for e in panels["Queue wait"])
    assert panels["GPU utilization per node"] == ["ray_node_gpus_utilization"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    assert board["uid"] and board["title"]


def test_dashboard_metrics_are_exported_names() -> None:
    """Every ray_orch_* series a dashboard queries is one orchestrator/runtime/metrics.py exports
    (Ray prefixes ``ray_``; counters gain ``_total``; histograms ``_bucket/_sum/_count``),
    and every exported metric is shown somewhere."""
    exported = {name for names in metrics.EXPORTED.values() for name in names}
    assert all(
        n.startswith("ray_" + base) for base, names in metrics.EXPORTED.items() for n in names
    )
    queried: set[str] = set()
    for board in DASHBOARDS.glob("*.json"):
        for expressions in exprs(json.loads(board.read_text())).values():
            for e in expressions:
                queried |= set(re.findall(r"\bray_orch_[a-z_]+", e))
    assert queried, "no dashboard queries the service metrics"
    assert queried <= exported, queried - exported
    for base in metrics.EXPORTED:
        assert any(n in queried for n in metrics.EXPORTED[base]), base


def test_ray_node_metric_names_exist_in_installed_ray() -> None:
    """The ray_node_* names the dashboards use are gauges the installed Ray defines."""
    from ray.dashboard.modules.reporter import reporter_agent

    defined = {f"ray_{name}" for name in reporter_agent.METRICS_GAUGES}
    queried: set[str] = set()
    for board in DASHBOARDS.glob("*.json"):
        for expressions in exprs(json.loads(board.read_text())).values():
            for e in expressions:
                queried |= set(re.findall(r"\bray_node_[a-z_]+", e))
    assert {"ray_node_gpus_utilization", "ray_node_cpu_utilization"} <= queried
    assert queried <= defined, queried - defined
