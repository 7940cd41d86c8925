"""Property: whatever a user types, ``orch sweep --dry-run`` ends 0 or 2, with no traceback,
nothing written, in bounded time and memory.

Overrides and small study files are generated from the grammar (Hydra's override grammar,
the Optuna sweeper's space grammar, YAML with aliases), valid and malformed: random keys,
sweep functions, nested lists, huge integers, quotes, globs, interval/tag forms, resolvers.
The CLI runs in-process (``orchestrator.cli.main``); the nastiest input (an alias bomb) also runs
as a subprocess, whose peak memory the OS reports.
"""

from __future__ import annotations

import contextlib
import io
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.cli import main

# Seconds to minutes each (training, subprocesses, simulation): not in `make test-fast`.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
#: A study small enough that a valid generated sweep plans in well under a second.
TINY = """# @package _global_
defaults:
  - override /optimizer: sgd
  - override /model: mlp_d
study: {name: tiny}
sweep:
  seeds: 1
  max_trials: 20
"""
#: Growth of the test process's peak RSS allowed over all examples (a MemoryError-class
#: input would allocate gigabytes; a planned sweep, megabytes).
RSS_GROWTH_MB = 1024

# -- the grammar ----------------------------------------------------------------------------
KEYS = st.sampled_from(
    [
        "seed",
        "train.epochs",
        "train.batch_size",
        "optimizer.lr",
        "optimizer.momentum",
        "model",
        "optimizer",
        "sweep.seeds",
        "sweep.axes.seed",
        "search.space.optimizer.lr",
        "+train.foo",
        "~train.epochs",
        "task.name",
        "resources.workers",
    ]
)
IDENT = st.from_regex(r"[a-z_][a-z0-9_]{0,6}(\.[a-z_][a-z0-9_]{0,6}){0,2}", fullmatch=True)
DIGITS = st.sampled_from([1, 3, 19, 400, 4300, 4301, 6000]).map(lambda n: "9" * n)
NUMBER = st.one_of(
    st.integers(-(10**6), 10**6).map(str),
    DIGITS,
    st.sampled_from(
        [
            "0",
            "-0",
            "1e999",
            "-1e999",
            "1e-400",
            "inf",
            "nan",
            "0.5",
            "1_000",
            "0x10",
            "1e3",
            ".5",
            "5.",
        ]
    ),
)
QUOTED = st.text(st.sampled_from("ab ,'\"\\$}{:=()[]*"), max_size=8).map(
    lambda s: "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"
)
WORD = st.sampled_from(
    [
        "sgd",
        "adam",
        "mlp_d",
        "cnn_d",
        "true",
        "null",
        "abc",
        "x y",
        "${oc.env:HOME}",
        "${now:%H}",
        "${train.epochs}",
        "*",
        "nosuch",
    ]
)
ATOM = st.one_of(NUMBER, QUOTED, WORD)


def _call(name: str, args: list[str]) -> str:
    return f"{name}({','.join(args)})"


VALUE = st.recursive(
    ATOM,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(lambda xs: "[" + ",".join(xs) + "]"),
        st.lists(st.tuples(IDENT, inner), max_size=3).map(
            lambda kv: "{" + ",".join(f"{k}:{v}" for k, v in kv) + "}"
        ),
        st.lists(inner, min_size=0, max_size=4).map(lambda xs: _call("choice", xs)),
        st.lists(NUMBER, min_size=0, max_size=4).map(lambda xs: _call("range", xs)),
        st.lists(NUMBER, min_size=0, max_size=3).map(lambda xs: _call("interval", xs)),
        st.tuples(st.sampled_from(["log", "foo", ""]), inner).map(
            lambda t: _call("tag", [x for x in t if x])
        ),
        st.tuples(st.sampled_from(["int", "float", "str", "bool", "sort", "shuffle"]), inner).map(
            lambda t: _call(*t[:1], [t[1]])
        ),
        st.lists(inner, min_size=2, max_size=4).map(",".join),
        st.sampled_from(["*", "sgd*", "nomatch*", "'*'"]).map(lambda g: _call("glob", [g])),
    ),
    max_leaves=8,
)
# Characters of the grammar in any order: mostly malformed.
NOISE = st.text(st.sampled_from("abc019.,=()[]{}'\"\\$:~+@/ *-"), max_size=30)
OVERRIDE = st.one_of(
    st.tuples(KEYS, VALUE).map(lambda kv: f"{kv[0]}={kv[1]}"),
    st.tuples(IDENT, VALUE).map(lambda kv: f"{kv[0]}={kv[1]}"),
    NOISE,
)


@st.composite
def study_files(draw: st.DrawFn) -> str:
    """A small study file: axes in the grammar, plain values, maybe YAML aliases (some of
    them a billion laughs), maybe malformed YAML."""
    lines = ["# @package _global_", "study: {name: gen}"]
    n, width = draw(st.integers(0, 9)), draw(st.integers(1, 12))
    if n:
        lines.append("bomb_0: &a0 [" + ", ".join(["x"] * width) + "]")
        lines += [
            f"bomb_{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, n)
        ]
    axes = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["seed", "optimizer.lr", "model", "train.epochs", "nokey"]), VALUE
            ),
            max_size=3,
        )
    )
    if axes:
        lines += ["sweep:", "  max_trials: 20", "  axes:"]
        lines += [f"    {k}: {v!r}" if draw(st.booleans()) else f"    {k}: {v}" for k, v in axes]
    if draw(st.booleans()):
        lines += ["train:", f"  epochs: {draw(ATOM)}"]
    if draw(st.integers(0, 9)) == 0:
        lines.append(draw(NOISE))
    return "\n".join(lines) + "\n"


# -- running the CLI ------------------------------------------------------------------------
@contextlib.contextmanager
def _workdir() -> Iterator[Path]:
    """A fresh temporary working directory holding a config dir with the tiny study."""
    old = Path.cwd()
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "conf"
        (conf / "study").mkdir(parents=True)
        (conf / "study" / "tiny.yaml").write_text(TINY)
        os.chdir(tmp)
        try:
            yield Path(tmp)
        finally:
            os.chdir(old)


def _check_run(work: Path, study: str, overrides: list[str]) -> int:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(
                [
                    "sweep",
                    study,
                    *overrides,
                    "--dry-run",
                    "--config-dir",
                    str(work / "conf"),
                    "--tracking-uri",
                    f"sqlite:///{work / 'mlflow.db'}",
                ]
            )
        except SystemExit as e:  # argparse: an override that looks like an option
            assert e.code == 2 and "orch: error: " in err.getvalue(), err.getvalue()
            return 2
    text = err.getvalue()
    assert code in (0, 2), (code, overrides, text)
    assert "Traceback" not in text, text
    if code == 2:  # one line; a validation error has one per problem, each "field: ..."
        assert text.startswith("error: "), text
        assert all(": " in line for line in text.strip().splitlines()), text
        if "Input should" not in text and "Extra inputs" not in text:
            assert len(text.strip().splitlines()) == 1, text
    assert sorted(p.name for p in work.iterdir()) == ["conf"], "something was written"
    return code


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# Warm-up (imports, the built-in composer) happens in the first example; derandomized so
# that CI sees the same inputs every run.
PROPERTY = settings(
    max_examples=20,
    deadline=timedelta(seconds=20),
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,
)


def test_overrides_exit_0_or_2_without_traceback_or_writes() -> None:
    with _workdir() as work:
        _check_run(work, "tiny", [])  # imports and caches: not part of the RSS bound
        before = _peak_rss_mb()

        codes: list[int] = []

        @PROPERTY
        @given(st.lists(OVERRIDE, min_size=1, max_size=3))
        def prop(overrides: list[str]) -> None:
            codes.append(_check_run(work, "tiny", overrides))

        prop()
        assert set(codes) == {0, 2}, "the generator should yield valid and invalid sweeps"
        assert _peak_rss_mb() - before < RSS_GROWTH_MB


def test_study_files_exit_0_or_2_without_traceback_or_writes() -> None:
    with _workdir() as work:
        _check_run(work, "tiny", [])
        before = _peak_rss_mb()

        codes: list[int] = []

        @settings(PROPERTY, max_examples=6)
        @given(study_files())
        def prop(text: str) -> None:
            # A new config dir each time: the composer is cached per directory.
            conf = Path(tempfile.mkdtemp(prefix="conf-", dir=work))
            (conf / "study").mkdir()
            (conf / "study" / "gen.yaml").write_text(text)
            try:
                out, err = io.StringIO(), io.StringIO()
                with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                    code = main(
                        [
                            "sweep",
                            "gen",
                            "--dry-run",
                            "--config-dir",
                            str(conf),
                            "--tracking-uri",
                            f"sqlite:///{work / 'mlflow.db'}",
                        ]
                    )
                assert code in (0, 2), (code, text, err.getvalue())
                codes.append(code)
                assert "Traceback" not in err.getvalue(), err.getvalue()
                assert sorted(p.name for p in work.iterdir()) == sorted(["conf", conf.name])
            finally:
                shutil.rmtree(conf)

        prop()
        assert set(codes) == {0, 2}, "the generator should yield valid and invalid studies"
        assert _peak_rss_mb() - before < RSS_GROWTH_MB


BOMB = (
    "# @package _global_\nstudy: {name: bomb}\n"
    + "a0: &a0 ["
    + ", ".join(["lol"] * 10)
    + "]\n"
    + "".join(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]\n" for i in range(1, 10))
)


def test_alias_bomb_as_a_subprocess_exits_2_in_bounded_memory(tmp_path: Path) -> None:
    conf = tmp_path / "conf" / "study"
    conf.mkdir(parents=True)
    (conf / "bomb.yaml").write_text(BOMB)
    (conf / "tiny.yaml").write_text(TINY)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # One process (its imports cost seconds): the alias bomb, which is refused before the
    # grid (whose range alone would be a trillion trials) is even counted.
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator.cli",
            "sweep",
            "bomb",
            "seed=range(0,1000000000000)",
            "--dry-run",
            "--config-dir",
            str(tmp_path / "conf"),
            "--tracking-uri",
            f"sqlite:///{tmp_path / 'mlflow.db'}",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: study/bomb.yaml: expands to more than")
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conf"]
    # The largest child's peak RSS: the imports (torch, Ray, Hydra), not the input.
    assert resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 < 2048
