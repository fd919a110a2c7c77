"""AnomalyGPT's conversation layout and answer grammar (reference doc, section 8).

The layout is decided once, at export, from the LLM's own tokenizer, and written into bundle.json;
the runtime only reads it, so the two wings cannot drift apart.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, Field

# 3x3 grid of the 224 frame, row first, exactly the names the training answers used.
FALLBACK_PRODUCT = "object"  # the reference's text-feature name for a product it does not know

POSITIONS = (
    ("top left", "top", "top right"),
    ("left", "center", "right"),
    ("bottom left", "bottom", "bottom right"),
)
ALL_POSITIONS = tuple(p for row in POSITIONS for p in row)

DEFAULT_QUESTION = "Is there any anomaly in the image?"
ASSISTANT_SUFFIX = "\n### Assistant:"
SEGMENT_BEFORE = "### Human: <Img>"
SEGMENT_MIDDLE = "</Img> "  # the trailing space is part of the trained prompt


class PromptLayout(BaseModel):
    """Token ids of the fixed segments and the special tokens, as the exporting tokenizer produced them.

    Sequence: bos + before + [E_img rows] + middle + [prompt rows] + tokens(question + assistant_suffix).
    """

    bos: list[int] = Field(description="[BOS]; 1 for LLaMA")
    before: list[int] = Field(description="'### Human: <Img>' tokenized alone, no special tokens")
    middle: list[int] = Field(description="'</Img> ' tokenized alone, no special tokens")
    n_img_rows: int = Field(1, description="rows of E_img (llama_proj output)")
    n_prompt_rows: int = Field(18, description="rows of the prompt learner output P")
    assistant_suffix: str = ASSISTANT_SUFFIX
    yes_token: int = Field(description="id of the piece '▁Yes' (3869 in LLaMA-1)")
    no_token: int = Field(description="id of the piece '▁No' (1939 in LLaMA-1)")
    stop_token: int = Field(description="id of '##' (2277 in LLaMA-1): the reference stops when it is generated")
    eos_token: int = 2
    max_new_tokens: int = 512

    @property
    def prefix_tokens(self) -> list[int]:
        """The part that never changes between frames: evaluated once and kept in the KV cache."""
        return self.bos + self.before

    @property
    def n_fixed(self) -> int:
        """Positions before the question (30 for the real model)."""
        return len(self.bos) + len(self.before) + self.n_img_rows + len(self.middle) + self.n_prompt_rows


def question_text(question: str, history: list[tuple[str, str]] | None = None) -> str:
    """The text after the image prompts, in the reference's multi-turn format.

    One turn:  'q\\n### Assistant:'.  More: 'q1\\n### Assistant: a1\\n### Human: q2\\n### Assistant:'.
    """
    text = ""
    for i, (q, a) in enumerate(history or []):
        text += (q if i == 0 else f" Human: {q}") + f"{ASSISTANT_SUFFIX} {a}\n###"
    text += question if not history else f" Human: {question}"
    return text + ASSISTANT_SUFFIX


def product_question(description: str | None) -> str:
    """The evaluation question: '<product description> Is there any anomaly in the image?'."""
    description = (description or "").strip()
    return f"{description} {DEFAULT_QUESTION}" if description else DEFAULT_QUESTION


def cell_position(row: float, col: float, size: int = 224) -> str:
    """Name of the 3x3 cell holding pixel (row, col) of a size x size frame (thresholds 1/3, 2/3)."""

    def third(v: float) -> int:
        v = v / size
        return 0 if v <= 1 / 3 else (1 if v <= 2 / 3 else 2)

    return POSITIONS[third(row)][third(col)]


_POS_ALT = "|".join(sorted((re.escape(p) for p in ALL_POSITIONS), key=len, reverse=True))
_POS_RE = re.compile(rf"\b({_POS_ALT})\b")


def parse_answer(text: str) -> tuple[bool | None, list[str]]:
    """Verdict and locations from an answer in the trained grammar.

    The reference's evaluation counts an answer anomalous when 'Yes' is in it and normal when 'No' is;
    an answer with neither (an untrained or random model) gives verdict None.
    """
    yes, no = text.find("Yes"), text.find("No")
    if yes < 0 and no < 0:
        verdict = None
    else:  # both present: the one said first
        verdict = no < 0 or (0 <= yes < no)
    if not verdict:
        return verdict, []
    # Locations only from the part after 'at the', so 'top' inside 'top left' is not counted twice.
    tail = text.split(" at the ", 1)[1] if " at the " in text else text
    return verdict, _POS_RE.findall(tail)
