"""The CPU emulation of the CUDA kernels (tests/cuda_emu, run by tests/cuda_emu/run.sh) takes every CUDA
source: each kernel launch and each dynamic shared-memory array is rewritten, nothing else."""

from __future__ import annotations

import importlib.util
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "cuda").glob("*.cu"))


def _rewrite():
    path = ROOT / "tests" / "cuda_emu" / "rewrite.py"
    spec = importlib.util.spec_from_file_location("cuda_emu_rewrite", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.rewrite


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_every_launch_and_shared_array_is_rewritten(source: pathlib.Path):
    text = source.read_text(encoding="utf-8")
    out = _rewrite()(text)
    launches = len(re.findall(r"<<<", text))
    shared = len(re.findall(r"extern\s+__shared__", text))
    assert "<<<" not in out and ">>>(" not in out and "extern __shared__" not in out
    assert out.count("::emu::Config(") == launches
    assert out.count("::emu::args(") == launches
    assert out.count("::emu::dynamic_smem()") == shared
    # outside the rewritten spans the source is unchanged
    assert len(out.splitlines()) == len(text.splitlines())


def test_the_sources_are_found():
    assert {p.name for p in SOURCES} >= {"pl.cu", "pl_tiles.cu", "binning.cu", "runtime.cu"}


@pytest.mark.parametrize(
    "text",
    ["k<<<1, 32>>>\n    (x);", "extern __shared__ double buf[];"],
    ids=["launch split before its arguments", "shared array of another type"],
)
def test_a_form_it_cannot_rewrite_is_an_error(text: str):
    with pytest.raises(SystemExit, match="rewrite.py"):
        _rewrite()(text)
