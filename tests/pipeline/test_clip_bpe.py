"""The runtime's pure-Python CLIP BPE against the export-side tokenizer (instant-clip-tokenizer, x86_64)."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from runtime.errors import AgptError
from runtime.pipeline.clip_bpe import N_MERGES, ClipBpe, read_merges
from runtime.pipeline.text_ensemble import class_sentences

pytest.importorskip("instant_clip_tokenizer", reason="the export-side tokenizer wheel is x86_64 only")

# MVTec AD and VisA class names, and names a line might use
PRODUCTS = [
    "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal nut", "pill", "screw", "tile",
    "toothbrush", "transistor", "wood", "zipper", "candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1",
    "macaroni2", "pcb1", "pcb4", "pipe_fryum", "object", "cookie", "M8 hex-bolt (zinc)", "Lid #42", "  two  spaces ",
]  # fmt: skip


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    from export.modeling.clip_tokenizer import BPE_FILE, write_bpe

    out = tmp_path_factory.mktemp("bpe")
    write_bpe(out, ["a photo of a bottle."])
    return ClipBpe.from_file(out / BPE_FILE)


def test_same_ids_as_the_export_tokenizer_on_the_prompt_ensemble(bpe):
    from export.modeling.clip_tokenizer import tokenize

    sentences = [s for p in PRODUCTS for half in class_sentences(p) for s in half]
    sentences += ["it's the cat's toy, don't!", "x" * 300, "naïve café 3½"]
    ours, theirs = bpe.tokenize(sentences), tokenize(sentences)
    assert ours.dtype == np.int64 and ours.shape == (len(sentences), 77)
    for s, a, b in zip(sentences, ours, theirs):
        assert np.array_equal(a, b), s


def test_vocabulary_layout(bpe):
    assert len(bpe.encoder) == 49408 and (bpe.sot, bpe.eot) == (49406, 49407)
    assert bpe.tokenize("")[0, :3].tolist() == [49406, 49407, 0]


def test_bad_merges_files_are_named(tmp_path):
    short = tmp_path / "short.txt.gz"
    short.write_bytes(gzip.compress(b"#version: 0.2\ni n\nt h\n"))
    with pytest.raises(AgptError, match=f"2 merges, CLIP uses {N_MERGES}"):
        read_merges(short)
    bad = tmp_path / "bad.txt"
    bad.write_text("#version: 0.2\nonlyone\n")
    with pytest.raises(AgptError, match="line 2 is not a merge"):
        read_merges(bad)
