"""``orch studies``: each study's description and claim ids, kept between runs.

Listing composes every study with Hydra, ~0.1 s of CPU each, most of it Hydra's composition
itself: sharing the parsed files between compositions saved ~15% only, since Hydra merges a
loaded config into the result without copying its nodes and so needs a fresh one each time.
So the listing is kept in ``$XDG_CACHE_HOME/orch`` (``~/.cache``), under a fingerprint of
everything composing reads: every file under the search path's folders (the built-in
``conf/``, ``--config-dir``, Hydra's own configs, any a plugin added) and the code that
composes (this package, Hydra and its plugins, OmegaConf, PyYAML, ANTLR), by each file's
size, mtime, ctime and inode, the interpreter and its import path's folders (a package
installed or removed). An edit anywhere composes again. Nothing
is kept when a study fails, with ``--tasks`` (a module may change what composes) or with
``ORCH_ALLOW_RESOLVERS`` set (a resolver may read the environment).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from orchestrator.config.paths import builtin_config_dir
from orchestrator.config.safe_yaml import ALLOW_ENV

#: Packages whose code decides what a composition gives.
CODE_PACKAGES = ("orchestrator", "hydra", "hydra_plugins", "omegaconf", "yaml", "antlr4")
#: Bumped when the cached entry's layout changes.
FORMAT = 1


@dataclass(frozen=True)
class StudyLine:
    """One study as ``orch studies`` lists it."""

    name: str
    description: str
    claims: str  # the claim ids, comma-separated ("" for none)


def cacheable(tasks: Sequence[str]) -> bool:
    """Whether a listing may be kept: no ``--tasks`` modules, no resolver allowed to read
    the environment."""
    return not tasks and not os.environ.get(ALLOW_ENV)


def cache_file(config_dir: str | None) -> Path:
    """Where the listing of this search path is kept (one file per ``--config-dir``)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "orch"
    user = str(Path(config_dir).resolve()) if config_dir else ""
    return base / f"studies-{hashlib.sha256(user.encode()).hexdigest()[:16]}.json"


def fingerprint(config_dir: str | None, search_dirs: Iterable[str]) -> str:
    """The stamps of every file composing reads (see the module docstring)."""
    roots = {str(builtin_config_dir()), *search_dirs}
    if config_dir:
        roots.add(str(Path(config_dir).resolve()))
    for package in CODE_PACKAGES:
        spec = importlib.util.find_spec(package)  # a top-level name: nothing is imported
        if spec is not None and spec.submodule_search_locations:
            roots.update(str(p) for p in spec.submodule_search_locations if os.path.isdir(p))
    h = hashlib.sha256(f"{FORMAT}\0{sys.version}\0{sys.executable}\n".encode())
    # A distribution installed or removed (a task plugin's entry point, which the command
    # loads) changes its site folder's mtime.
    for entry in sys.path:
        if entry.endswith(("site-packages", "dist-packages")) and os.path.isdir(entry):
            h.update(f"{entry}\0{os.stat(entry).st_mtime_ns}\n".encode())
    for root in sorted(roots):
        for folder, subdirs, files in os.walk(root, followlinks=True):
            # Bytecode is rewritten by any import: its source's stamps are what count.
            subdirs[:] = sorted(d for d in subdirs if d != "__pycache__")
            for name in sorted(files):
                path = os.path.join(folder, name)
                try:
                    st = os.stat(path)
                except OSError:  # a dangling link: its presence still counts
                    h.update(f"{path}\0-\n".encode())
                    continue
                h.update(
                    f"{path}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\0{st.st_ino}\n".encode()
                )
    return h.hexdigest()


def cached(config_dir: str | None) -> list[StudyLine] | None:
    """The kept listing, if nothing it was composed from has changed since."""
    try:
        entry = json.loads(cache_file(config_dir).read_text())
        if entry["fingerprint"] != fingerprint(config_dir, entry["search_dirs"]):
            return None
        return [StudyLine(*s) for s in entry["studies"]]
    except (OSError, ValueError, KeyError, TypeError):  # none kept, or unreadable: compose
        return None


def keep(
    config_dir: str | None, stamp: str, search_dirs: Sequence[str], lines: Sequence[StudyLine]
) -> None:
    """Keep a listing under the fingerprint taken before it was composed (a file edited
    meanwhile leaves it stale, so it is composed again next time); silently not kept
    where the cache folder cannot be written."""
    path = cache_file(config_dir)
    entry = {
        "fingerprint": stamp,
        "search_dirs": list(search_dirs),
        "studies": [[s.name, s.description, s.claims] for s in lines],
    }
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(entry))
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
