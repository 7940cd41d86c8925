"""User configs are data: bounded to load, and unable to read the environment or files.

Hydra reads a config file with ``OmegaConf.load``, which builds every alias's target again
where it is used, so a few lines of YAML aliases (the "billion laughs") take minutes and
gigabytes. :func:`check_config_dir` reads the user's ``--config-dir`` first with PyYAML's
composer, which keeps an alias as a reference to one node, and counts the nodes the
document would expand to without expanding it; a file over :data:`MAX_NODES` (or nested
deeper than :data:`MAX_DEPTH`, or larger than :data:`MAX_BYTES`) is bad input, named.

OmegaConf resolvers run code at resolution time: ``${oc.env:AWS_SECRET}`` copies an
environment variable into the config, which the sweep would log to the tracking store.
User input (study files, ``--config-dir``, overrides) may only interpolate config keys
(``${a.b}``) and the resolvers in :data:`PURE_RESOLVERS`, which read nothing but the config.
An operator allows more with ``ORCH_ALLOW_RESOLVERS``: comma-separated resolver names
(``oc.env``), or a resolver and its first argument (``oc.env:EPOCHS``, that one variable).

The allow-list is the operator's: on a cluster, the environment the head was started with.
A sweep submitted as a Ray Job (``orch submit``, or Ray's own ``JobSubmissionClient``) runs
its driver there, with the job's ``runtime_env`` ``env_vars`` added to that environment, so a
submitter could set ``ORCH_ALLOW_RESOLVERS`` there to read the cluster's secrets. Ray tells
the driver which variables the job set (:data:`RAY_JOB_CONFIG_ENV`); a resolver met in a job
that set the allow-list itself is refused, naming that cause.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from orchestrator.errors import SpecError

#: Nodes one YAML document may expand to, aliases counted at every use.
MAX_NODES = 100_000
MAX_DEPTH = 64
MAX_BYTES = 1_000_000
#: YAML files a config dir may hold (each is read before Hydra starts).
MAX_FILES = 1_000
#: Resolvers that read only the config itself.
PURE_RESOLVERS = frozenset({"oc.select", "oc.dict.keys", "oc.dict.values", "oc.deprecated"})
ALLOW_ENV = "ORCH_ALLOW_RESOLVERS"
#: What Ray's job supervisor sets in a submitted job's driver: JSON with the job's
#: ``runtime_env`` (Ray's ``RAY_JOB_CONFIG_JSON_ENV_VAR``; a job cannot override it, the
#: supervisor writes it after the job's own variables).
RAY_JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"

# ``${name:`` opens a resolver call; nested calls are found too since the whole text is
# scanned. ``\${`` (an escaped, literal interpolation) is refused as well: cheaper than
# proving that no resolver such as oc.decode turns it back into a live one.
_RESOLVER = re.compile(r"\$\{\s*([A-Za-z_][\w.\-]*)\s*:\s*([^,}\s]*)")


def allowed_resolvers() -> set[str]:
    """The operator's allow-list from ``ORCH_ALLOW_RESOLVERS`` (names or name:first-arg).

    Raises:
        SpecError: In a Ray Job whose submitter set the variable (see the module doc).
    """
    if ALLOW_ENV in job_env_vars():
        raise SpecError(
            f"{ALLOW_ENV}: set by the job's submitter (its runtime_env env_vars), which "
            f"may not widen what configs can read on the cluster; allowed: {ALLOW_ENV} "
            f"in the cluster's own environment, set by its operator"
        )
    return {x.strip() for x in os.environ.get(ALLOW_ENV, "").split(",") if x.strip()}


def job_env_vars() -> dict[str, str]:
    """The variables the submitter of the Ray Job this process drives set; {} outside one.

    Unreadable job config: treated as setting everything, so nothing is allowed."""
    text = os.environ.get(RAY_JOB_CONFIG_ENV)
    if not text:
        return {}
    try:
        env_vars = json.loads(text).get("runtime_env", {}).get("env_vars") or {}
    except (ValueError, AttributeError):
        return {ALLOW_ENV: "?"}
    return env_vars if isinstance(env_vars, dict) else {ALLOW_ENV: "?"}


def check_resolvers(text: str, where: str) -> None:
    """Refuse a resolver in ``text`` that may read outside the config.

    Raises:
        SpecError: Naming ``where`` and the resolver.
    """
    if "${" not in text:
        return
    allowed: set[str] | None = None  # read at the first impure resolver only
    for m in _RESOLVER.finditer(text):
        name, arg = m.group(1), m.group(2).strip("'\"")
        if name in PURE_RESOLVERS:
            continue
        if allowed is None:
            allowed = allowed_resolvers()
        if name in allowed or f"{name}:{arg}" in allowed:
            continue
        raise SpecError(
            f"{where}: resolver {name!r} may read outside the config (the "
            f"environment, files, the clock) and is not allowed in user configs; "
            f"allowed: ${{key.path}} and {', '.join(sorted(PURE_RESOLVERS))}; an "
            f"operator can allow it with {ALLOW_ENV}={name} or {name}:{arg or 'ARG'}"
        )


def check_tree(tree: Any, path: str = "") -> None:
    """:func:`check_resolvers` on every key and string value of a config container."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            where = f"{path}.{k}" if path else str(k)
            check_resolvers(str(k), where)
            check_tree(v, where)
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            check_tree(v, f"{path}[{i}]")
    elif isinstance(tree, str):
        check_resolvers(tree, path or "<root>")


def check_config_dir(root: Path) -> None:
    """Check every YAML file under a user's config dir (see the module doc).

    A file PyYAML cannot parse is left to Hydra, which reports it with its line when (and
    only when) a study uses it.

    Raises:
        SpecError: Naming the file (relative to ``root``) and the limit.
    """
    paths = []
    for folder, _, files in os.walk(root):  # symlinked folders not followed: no cycles
        paths += [Path(folder) / f for f in files if f.endswith((".yaml", ".yml"))]
        if len(paths) > MAX_FILES:
            raise SpecError(
                f"--config-dir: {root} holds more than {MAX_FILES:,} YAML files; "
                f"allowed: a folder of studies and options, up to {MAX_FILES:,}"
            )
    for path in sorted(paths):
        if path.is_file():
            check_yaml_file(path, path.relative_to(root).as_posix())


def check_yaml_file(path: Path, name: str) -> None:
    """Check one YAML file: size, alias expansion, depth, resolvers (see the module doc)."""
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise SpecError(f"{name}: {size:,} bytes; allowed: config files up to {MAX_BYTES:,}")
    # Hydra's own loader (OmegaConf's), imported here: `orch studies` with its listing kept
    # reads ALLOW_ENV from this module and needs no OmegaConf.
    from omegaconf._utils import get_yaml_loader

    text = path.read_text(errors="replace")
    try:
        node = yaml.compose(text, Loader=get_yaml_loader())
    except yaml.YAMLError:
        return
    except RecursionError:
        raise SpecError(
            f"{name}: nested too deeply to read; allowed: up to {MAX_DEPTH} levels"
        ) from None
    if node is not None:
        _walk(node, name)


def _walk(root: yaml.Node, name: str) -> None:
    """Count the expanded nodes (memoized per node: an alias is the same node object) and
    check depth, cycles and resolvers, iteratively (no recursion limit to hit)."""
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, int, str, bool]] = [(root, 1, "", False)]
    open_nodes: set[int] = set()
    while stack:
        node, depth, where, done = stack.pop()
        if done:
            open_nodes.discard(id(node))
            sizes[id(node)] = 1 + sum(sizes[id(c)] for c in _children(node))
            if sizes[id(node)] > MAX_NODES:
                raise SpecError(
                    f"{name}: expands to more than {MAX_NODES:,} nodes (YAML "
                    f"aliases repeat their target at every use); allowed: up to "
                    f"{MAX_NODES:,}, with fewer or smaller aliases"
                )
            continue
        if id(node) in sizes:
            continue
        if id(node) in open_nodes:
            raise SpecError(
                f"{name}: {where or '<root>'} refers to itself through an alias; "
                f"allowed: aliases to nodes outside themselves"
            )
        if depth > MAX_DEPTH:
            raise SpecError(
                f"{name}: {where or '<root>'} is nested more than {MAX_DEPTH} "
                f"levels deep; allowed: up to {MAX_DEPTH}"
            )
        if isinstance(node, yaml.ScalarNode):
            check_resolvers(str(node.value), f"{name}: {where or '<root>'}")
            _check_number(node, f"{name}: {where or '<root>'}")
            sizes[id(node)] = 1
            continue
        open_nodes.add(id(node))
        stack.append((node, depth, where, True))
        for key, child in _labelled(node):
            path = f"{where}{key}" if key.startswith("[") or not where else f"{where}.{key}"
            stack.append((child, depth + 1, path, False))


def _check_number(node: yaml.ScalarNode, where: str) -> None:
    """YAML numbers PyYAML cannot build (a ValueError inside Hydra) or builds as ``inf``."""
    text = str(node.value).replace("_", "")
    if node.tag.endswith(":int"):
        digits = sum(ch.isdigit() for ch in text)
        limit = sys.get_int_max_str_digits() or 4300
        if digits > limit:
            raise SpecError(f"{where}: an integer of {digits} digits; allowed: up to {limit}")
    elif node.tag.endswith(":float") and "inf" not in text.lower() and "nan" not in text.lower():
        try:
            overflow = math.isinf(float(text))
        except ValueError:  # a YAML 1.1 form Python does not read (1:30.5): PyYAML's business
            overflow = False
        if overflow:
            raise SpecError(
                f"{where}: {node.value} is beyond the float range; allowed: "
                f"finite numbers, or .inf written as .inf"
            )


def _children(node: yaml.Node) -> list[yaml.Node]:
    return [c for _, c in _labelled(node)]


def _labelled(node: yaml.Node) -> list[tuple[str, yaml.Node]]:
    if isinstance(node, yaml.MappingNode):
        out = []
        for k, v in node.value:
            label = str(k.value) if isinstance(k, yaml.ScalarNode) else "<key>"
            out += [(label, k), (label, v)]
        return out
    if isinstance(node, yaml.SequenceNode):
        return [(f"[{i}]", c) for i, c in enumerate(node.value)]
    return []
