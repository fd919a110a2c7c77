"""Small frictions a new user met: `--quant f32` (any case) and `agpt export llm --out model.gguf` (a file)."""

from __future__ import annotations

import argparse
import json

import pytest

from runtime.errors import AgptError


def test_quant_names_in_any_case():
    from export.llm_export import _quant_arg, quant_name

    assert [quant_name(q) for q in ("f32", "F16", "q8_0", "q4_k_m", " Q4_K_M ")] == ["F32", "F16", "Q8_0", "Q4_K_M", "Q4_K_M"]
    with pytest.raises(AgptError, match="unknown quantisation 'q5'"):
        quant_name("q5")
    with pytest.raises(argparse.ArgumentTypeError):
        _quant_arg("int4")


def test_cli_parsers_take_lower_case_quant():
    from export import bundle_writer, llm_export

    for mod, extra in ((llm_export, ["--vicuna", "v", "--pandagpt", "p", "--out", "o"]), (bundle_writer, ["--out", "o"])):
        p = argparse.ArgumentParser()
        mod.add_arguments(p)
        assert p.parse_args([*extra, "--quant", "f32"]).quant == "F32"


def test_export_llm_out_names_a_file(tiny_ckpt, tmp_path):
    from export.checkpoints import PANDAGPT, VICUNA
    from export.llm_export import export_llm

    info = export_llm(tiny_ckpt / VICUNA, tiny_ckpt / PANDAGPT, tmp_path / "model.gguf", "f32", progress=lambda s: None)
    assert (tmp_path / "model.gguf").is_file() and not (tmp_path / "model.gguf").is_dir()
    assert info.file == "model.gguf" and info.quant == "F32"
    assert json.loads((tmp_path / "model.json").read_text())["file"] == "model.gguf"
    assert not list(tmp_path.glob("*.tmp"))
