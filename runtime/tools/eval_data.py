"""The labelled image folders `agpt eval` (and `agpt bank tune`) read, and the product description they judge with.

Layouts (DIR = --data/--category, or --data itself):
- MVTec: DIR/train/good (shots), DIR/test/good, DIR/test/<defect>, and optionally DIR/ground_truth/<defect>/
  <stem>_mask.png. Without masks (most plants' folders) the image metrics are reported and the pixel metrics
  are left out with a note (pixel_note);
- plain: DIR/good and DIR/bad (or any other folder names for defect types); the normal shots come from
  DIR/train/good or --shots-dir.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from runtime.errors import AgptError
from runtime.pipeline.preprocess import list_images

GOOD = "good"


@dataclass
class Sample:
    path: Path
    defect: str  # 'good' or the defect folder name
    mask_path: Path | None

    @property
    def label(self) -> bool:
        return self.defect != GOOD


def category_root(data: Path, category: str | None) -> Path:
    data = Path(data)
    if category is None:
        if not data.is_dir():
            raise AgptError(f"{data}: no such folder")
        return data
    root = data / category
    if not root.is_dir():
        have = ", ".join(sorted(p.name for p in data.iterdir() if p.is_dir())) if data.is_dir() else "folder absent"
        raise AgptError(f"{root}: no such category folder (in {data}: {have})")
    return root


def train_shots(root: Path, shots_dir: Path | None = None) -> list[Path]:
    folder = Path(shots_dir) if shots_dir is not None else root / "train" / GOOD
    if shots_dir is None and not folder.is_dir():
        raise AgptError(f"{root}: no train/good folder of normal shots: give --shots-dir")
    shots = list_images(folder)
    if not shots:
        raise AgptError(f"{folder}: no normal shot images")
    return shots


def test_folder(root: Path) -> Path:
    """MVTec's DIR/test, or the plain layout's DIR itself (DIR/good + DIR/bad)."""
    if (root / "test").is_dir():
        return root / "test"
    if (root / GOOD).is_dir():
        return root
    raise AgptError(f"{root}: neither test/good + test/<defect> (MVTec) nor good/ + bad/ folders")


def list_samples(root: Path, max_images: int | None = None) -> list[Sample]:
    """The labelled images; a defect image's mask_path is None when ground_truth/<type>/<stem>_mask.png
    (MVTec) is absent: such a set is judged on image labels alone (pixel_note says so)."""
    test = test_folder(root)
    skip = {"train", "ground_truth"} if test == root else set()
    groups: dict[str, list[Sample]] = {}
    for d in sorted(p for p in test.iterdir() if p.is_dir() and p.name not in skip):
        items = []
        for img in list_images(d):
            mask = None
            if d.name != GOOD:
                mask = root / "ground_truth" / d.name / f"{img.stem}_mask.png"
                mask = mask if mask.is_file() else None
            items.append(Sample(img, d.name, mask))
        if items:
            groups[d.name] = items
    if GOOD not in groups or len(groups) < 2:
        raise AgptError(f"{test}: needs a good folder and at least one defect folder (found: {', '.join(groups) or 'none'})")
    samples = [s for g in groups.values() for s in g]
    if max_images is not None and max_images < len(samples):
        # round-robin over the folders, so a small subset still holds good and every defect type
        picked, queues = [], [list(g) for g in groups.values()]
        while len(picked) < max_images:
            for q in queues:
                if q and len(picked) < max_images:
                    picked.append(q.pop(0))
        samples = sorted(picked, key=lambda s: (s.defect, s.path.name))
    return samples


def pixel_note(root: Path, samples: list[Sample]) -> str | None:
    """None when every defect image has its mask; else why the pixel metrics are left out."""
    bad = [s for s in samples if s.label]
    missing = [s for s in bad if s.mask_path is None]
    if not missing:
        return None
    if len(missing) == len(bad):
        return "no ground-truth masks: pixel metrics left out (image labels only)"
    first = root / "ground_truth" / missing[0].defect / f"{missing[0].path.stem}_mask.png"
    return f"{len(missing)} of {len(bad)} ground-truth masks missing (first: {first}): pixel metrics left out"


def dataset_credit(data: Path, category: str) -> str:
    """Source/licence lines of the category from the datasets README, when there is one (attribution on sheets)."""
    readme = Path(data) / "README.md"
    if not readme.is_file():
        return ""
    lines, inside, out = readme.read_text(errors="replace").splitlines(), False, []
    for line in lines:
        if line.startswith("#"):
            inside = line.lstrip("#").strip().lower() == category.lower()
            continue
        if inside and re.search(r"^\W*(source|licen[cs]e)\b", line, re.I):
            # first sentence only, without a dangling 'folder' that continues on the next line
            out.append(re.sub(r",\s*folder$", "", re.split(r"(?<=\))\.\s|\.\s", line.strip(" -"))[0]))
    return " | ".join(out)


def default_description(category: str) -> str:
    return f"This is a photo of a {category} for anomaly detection, which should be without any damage, flaw, defect, scratch, hole or broken part."


def resolve_description(description: str | None, category: str) -> tuple[str, str]:
    """(text, where it came from). 'auto': the paper's class description when there is one."""
    if description == "auto":
        from runtime.tools.descriptions import SOURCE, paper_description

        paper = paper_description(category)
        if paper is not None:
            return paper, f"paper ({SOURCE})"
        return default_description(category), "generic (no paper description for this class)"
    if description is None:
        return default_description(category), "generic"
    return description, "given"
