"""Backend selection, fallback, zero-copy inputs, settings and the `prefcal info` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import prefcal
import pytest
from conftest import binary_data
from prefcal import _backend, cli


def _run(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=full_env, timeout=120
    )


def test_import_does_not_import_gpu_libraries():
    out = _run(
        """
        import sys, prefcal, numpy as np
        prefcal.ece(np.array([0.5, 0.9]), np.array([1, 0]))
        prefcal.backends()
        print(sorted(m for m in ("torch", "cupy") if m in sys.modules))
        """
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_fallback_to_reference_warns_exactly_once():
    out = _run(
        """
        import sys, warnings
        sys.modules["prefcal._cpu"] = None   # simulate a build without the C++ module
        import numpy as np, prefcal
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rng = np.random.default_rng(0)
            c = rng.random(1000); y = rng.random(1000) < c
            a = prefcal.ece(c, y); b = prefcal.ece(c, y, strategy="quantile"); prefcal.brier(c, y)
        msgs = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
        print(len(msgs)); print(msgs[0]); print(repr(a))
        print(prefcal.backends()["cpu"]["available"], prefcal.config.get_num_threads())
        """
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "1"
    assert "prefcal._cpu could not be imported" in lines[1] and "pure-NumPy reference" in lines[1]
    rng = np.random.default_rng(0)
    c = rng.random(1000)
    y = rng.random(1000) < c
    assert float(lines[2]) == pytest.approx(prefcal.ece(c, y), rel=1e-12)
    assert lines[3] == "False 1"


def test_forced_numpy_backend_gives_the_same_numbers(monkeypatch, rng):
    conf, correct = binary_data(rng, 10**5, np.float32)
    fast = prefcal.reliability(conf, correct)
    monkeypatch.setenv("PREFCAL_BACKEND", "numpy")
    assert prefcal.config.get_backend() == "numpy"
    ref = prefcal.reliability(conf, correct)
    np.testing.assert_array_equal(fast.count, ref.count)
    np.testing.assert_allclose(fast.sum_confidence, ref.sum_confidence, rtol=1e-12)


def test_forced_cuda_without_gpu_is_a_clear_error(monkeypatch):
    if prefcal.backends()["cuda"]["available"]:
        pytest.skip("this machine has a usable GPU")
    monkeypatch.setenv("PREFCAL_BACKEND", "cuda")
    with pytest.raises(RuntimeError, match="PREFCAL_BACKEND=cuda but prefcal._cuda is not usable"):
        prefcal.ece(np.array([0.5]), np.array([1]))


def test_backends_report():
    b = prefcal.backends()
    assert set(b) == {"numpy", "cpu", "cuda"}
    assert b["numpy"]["available"] is True
    if b["cpu"]["available"]:
        assert isinstance(b["cpu"]["openmp"], bool) and b["cpu"]["threads"] >= 1
    else:
        assert b["cpu"]["reason"]
    if not b["cuda"]["available"]:
        assert b["cuda"]["reason"]
    else:
        assert b["cuda"]["devices"]


def test_set_num_threads_round_trip():
    if _backend.cpu_module() is None:
        pytest.skip("prefcal._cpu is not importable")
    default = prefcal.config.get_num_threads()
    try:
        prefcal.config.set_num_threads(3)
        assert prefcal.config.get_num_threads() == (3 if prefcal.backends()["cpu"]["openmp"] else 1)
    finally:
        prefcal.config.set_num_threads(None)
    assert prefcal.config.get_num_threads() == default


def test_torch_cpu_tensors_are_read_without_a_copy(rng):
    torch = pytest.importorskip("torch")
    conf, correct = binary_data(rng, 5000, np.float32)
    t = torch.from_numpy(conf).requires_grad_(True)
    view = prefcal._arrays.to_numpy_input(t)
    assert view.ctypes.data == t.data_ptr()  # DLPack: same memory
    got = prefcal.ece(t, torch.from_numpy(correct))
    assert got == pytest.approx(prefcal.ece(conf, correct), rel=1e-13)
    assert prefcal.ece(t.to(torch.bfloat16), torch.from_numpy(correct)) >= 0.0


def test_cli_info(capsys):
    assert cli.main(["info"]) == 0
    text = capsys.readouterr().out
    assert f"prefcal {prefcal.__version__}" in text and "cpu" in text and "cuda" in text
    if prefcal.backends()["cpu"]["available"] and prefcal.backends()["cpu"]["openmp"]:
        assert "OpenMP" in text
    assert cli.main(["info", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["prefcal"] == prefcal.__version__ and set(d["backends"]) == {"numpy", "cpu", "cuda"}


def test_cli_without_command_prints_help(capsys):
    assert cli.main([]) == 2
    assert "info" in capsys.readouterr().out


@pytest.mark.parametrize("module", ["prefcal.cli", "prefcal"])
def test_console_script_runs(module):
    out = subprocess.run([sys.executable, "-m", module, "info"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "backends:" in out.stdout
    bad = subprocess.run(
        [sys.executable, "-m", module, "info", "--bogus"], capture_output=True, text=True, timeout=120
    )
    assert bad.returncode == 2 and "unrecognized arguments: --bogus" in bad.stderr


@pytest.mark.parametrize(
    "name",
    ["calibration", "marginals", "metrics", "pl", "ranking", "recalibrate", "reward", "noise", "torch"],
)
def test_doctests(name):
    import doctest
    import importlib

    if name == "torch":
        pytest.importorskip("torch")
    module = importlib.import_module(f"prefcal.{name}")
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_demo_writes_its_report(tmp_path, capsys):
    import json

    from prefcal import cli

    out = tmp_path / "demo"
    assert cli.main(["demo", "--out", str(out), "--prompts", "400", "--items", "4", "--seed", "3"]) == 0
    doc = json.loads((out / "report.json").read_text())
    assert set(doc) == {"prefcal", "input", "models"}
    assert set(doc["models"]) == {"true_model", "over-confident", "under-confident"}
    over, true = doc["models"]["over-confident"], doc["models"]["true_model"]
    assert set(over["levels"]) == {"sub2", "sub3", "top1", "top2", "full", "positions"}
    assert over["temperature"]["beta"] < 1 < doc["models"]["under-confident"]["temperature"]["beta"]
    assert over["levels"]["top1"]["ece"] > true["levels"]["top1"]["ece"]
    assert "| over-confident |" in (out / "report.md").read_text()
    assert len(list(out.glob("reliability_*.png"))) == 3
    assert "over-confident" in capsys.readouterr().out
    assert cli.main(["demo", "--items", "40"]) == 2
    assert cli.main(["demo", "--seed", "-3"]) == 2
    # two responses: the levels that exist (no sub3, top2); two prompts: no best temperature, said so
    small = tmp_path / "small"
    assert cli.main(["demo", "--out", str(small), "--prompts", "2", "--items", "2", "--seed", "1"]) == 0
    doc = json.loads((small / "report.json").read_text())
    assert set(doc["models"]["true_model"]["levels"]) == {"sub2", "top1", "full", "positions"}
    assert "sub3" not in (small / "report.md").read_text()


def test_bench_command(capsys):
    from prefcal import cli

    assert cli.main(["bench", "--scale", "0.001", "--reps", "1"]) == 0
    out = capsys.readouterr().out
    assert "copy bandwidth" in out and "classwise sub-3" in out and "PL log-likelihood" in out
    assert cli.main(["bench", "--scale", "0"]) == 2
    try:
        import cupy  # noqa: F401
    except ImportError:
        assert cli.main(["bench", "--device", "cuda"]) == 1
        assert "needs CuPy" in capsys.readouterr().err


def test_readme_python_blocks_run_verbatim(tmp_path, monkeypatch):
    """Every Python block of the README, in order in one namespace (later blocks use the earlier ones' data),
    as a reader would paste them; the Dask one writes its file into a temporary directory."""
    import re
    from pathlib import Path

    pytest.importorskip("torch")
    pytest.importorskip("distributed")
    pytest.importorskip("matplotlib").use("Agg")
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 6
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    try:
        for i, block in enumerate(blocks):
            exec(compile(block, f"README.md python block {i}", "exec"), namespace)  # noqa: S102
    finally:
        client = namespace.get("client")
        if client is not None:
            cluster = client.cluster
            client.close()
            cluster.close()
