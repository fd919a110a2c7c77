"""The paper's per-class product descriptions, as the released evaluation code writes them.

Source: CASIA-IVA-Lab/AnomalyGPT, commit a5e68384a35593ae86f595da6c1420ed7482ce03,
code/test_mvtec.py and code/test_visa.py (the `describles` dicts). The texts are copied letter for letter,
typos included ("chewinggom", "fliped"): the LLM was evaluated with exactly these strings, and
`agpt eval --description auto` must put the same words before the question to reproduce the paper.

Both scripts ask `describles[c] + ' ' + "Is there any anomaly in the image?"`, which is what
runtime.pipeline.prompt.product_question builds from a description.

Normal shots of the official few-shot runs (for reproducing them):
  MVTec-AD: train/good/{4*round + i:03d}.png for i < k, round = 3 by default (test_mvtec.py --round 3),
  VisA: the split CSV's train rows 4*round .. 4*round + k - 1 of the class, round = 14 by default.
"""

from __future__ import annotations

SOURCE = "CASIA-IVA-Lab/AnomalyGPT@a5e6838 code/test_mvtec.py, code/test_visa.py"

MVTEC_AD = {
    "bottle": "This is a photo of a bottle for anomaly detection, which should be round, without any damage, flaw, defect, scratch, hole or broken part.",
    "cable": "This is a photo of three cables for anomaly detection, cables cannot be missed or swapped, which should be without any damage, flaw, defect, scratch, hole or broken part.",
    "capsule": "This is a photo of a capsule for anomaly detection, which should be black and orange, with print '500', without any damage, flaw, defect, scratch, hole or broken part.",
    "carpet": "This is a photo of carpet for anomaly detection, which should be without any damage, flaw, defect, scratch, hole or broken part.",
    "grid": "This is a photo of grid for anomaly detection, which should be without any damage, flaw, defect, scratch, hole or broken part.",
    "hazelnut": "This is a photo of a hazelnut for anomaly detection, which should be without any damage, flaw, defect, scratch, hole or broken part.",
    "leather": "This is a photo of leather for anomaly detection, which should be brown and without any damage, flaw, defect, scratch, hole or broken part.",
    "metal_nut": "This is a photo of a metal nut for anomaly detection, which should be without any damage, flaw, defect, scratch, hole or broken part, and shouldn't be fliped.",
    "pill": "This is a photo of a pill for anomaly detection, which should be white, with print 'FF' and red patterns, without any damage, flaw, defect, scratch, hole or broken part.",
    "screw": "This is a photo of a screw for anomaly detection, which tail should be sharp, and without any damage, flaw, defect, scratch, hole or broken part.",
    "tile": "This is a photo of tile for anomaly detection, which should be without any damage, flaw, defect, scratch, hole or broken part.",
    "toothbrush": "This is a photo of a toothbrush for anomaly detection, which should be without any damage, flaw, defect, scratch, hole or broken part.",
    "transistor": "This is a photo of a transistor for anomaly detection, which should be without any damage, flaw, defect, scratch, hole or broken part.",
    "wood": "This is a photo of wood for anomaly detection, which should be brown with patterns, without any damage, flaw, defect, scratch, hole or broken part.",
    "zipper": "This is a photo of a zipper for anomaly detection, which should be without any damage, flaw, defect, scratch, hole or broken part.",
}  # fmt: skip

VISA = {
    "candle": "This is a photo of 4 candles for anomaly detection, every candle should be round, without any damage, flaw, defect, scratch, hole or broken part.",
    "capsules": "This is a photo of many small capsules for anomaly detection, every capsule is green, should be without any damage, flaw, defect, scratch, hole or broken part.",
    "cashew": "This is a photo of a cashew for anomaly detection, which should be without any damage, flaw, defect, scratch, hole or broken part.",
    "chewinggum": "This is a photo of a chewinggom for anomaly detection, which should be white, without any damage, flaw, defect, scratch, hole or broken part.",
    "fryum": "This is a photo of a fryum for anomaly detection on green background, which should be without any damage, flaw, defect, scratch, hole or broken part.",
    "macaroni1": "This is a photo of 4 macaronis for anomaly detection, which should be without any damage, flaw, defect, scratch, hole or broken part.",
    "macaroni2": "This is a photo of 4 macaronis for anomaly detection, which should be without any damage, flaw, defect, scratch, hole or broken part.",
    "pcb1": "This is a photo of pcb for anomaly detection, which should be without any damage, flaw, defect, scratch, hole or broken part.",
    "pcb2": "This is a photo of pcb for anomaly detection, which should be without any damage, flaw, defect, scratch, hole or broken part.",
    "pcb3": "This is a photo of pcb for anomaly detection, which should be without any damage, flaw, defect, scratch, hole or broken part.",
    "pcb4": "This is a photo of pcb for anomaly detection, which should be without any damage, flaw, defect, scratch, hole or broken part.",
    "pipe_fryum": "This is a photo of a pipe fryum for anomaly detection, which should be without any damage, flaw, defect, scratch, hole or broken part.",
}  # fmt: skip

# MVTec-AD's train/good shots of the official few-shot run: 4*round + i (test_mvtec.py, --round 3)
MVTEC_ROUND = 3


def paper_description(category: str) -> str | None:
    """The released code's description of an MVTec-AD or VisA class, or None for any other class."""
    return MVTEC_AD.get(category) or VISA.get(category)


def official_mvtec_shots(k: int, round_: int = MVTEC_ROUND) -> list[str]:
    """File names of test_mvtec.py's k normal shots under <class>/train/good."""
    return [f"{4 * round_ + i:03d}.png" for i in range(k)]
