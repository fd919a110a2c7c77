"""The prompt ensemble AnomalyGPT's code uses for text features (reference doc, section 3).

7 normal states and 5 abnormal states, each in 2 templates: 14 + 10 sentences per product. The sentence
embeddings (L2-normalised) are averaged per class and the mean is L2-normalised again:
text_feats (2,E) = [normal, abnormal]. Constant per product: computed at export (export.modeling.text_prompts,
torch text tower) or on the device for a product named there (runtime.pipeline.inspector: the bundle's
text-encoder graph and runtime.pipeline.clip_bpe), from these same sentences.
"""

from __future__ import annotations

import numpy as np

NORMAL_STATES = ("{}", "flawless {}", "perfect {}", "unblemished {}", "{} without flaw", "{} without defect", "{} without damage")
ABNORMAL_STATES = ("damaged {}", "broken {}", "{} with flaw", "{} with defect", "{} with damage")
TEMPLATES = ("a photo of a {}.", "a photo of the {}.")
FALLBACK_NAME = "object"  # what the reference uses for a product it does not know


def class_sentences(product_name: str | None) -> tuple[list[str], list[str]]:
    """(normal sentences, abnormal sentences), state-major: for each state, each template."""
    name = (product_name or "").strip() or FALLBACK_NAME

    def fill(states):
        return [t.format(s.format(name)) for s in states for t in TEMPLATES]

    return fill(NORMAL_STATES), fill(ABNORMAL_STATES)


def class_means(sentence_emb: np.ndarray, n_normal: int) -> np.ndarray:
    """(N,E) sentence embeddings (normal rows first) -> (2,E) float32: per-class mean, L2-normalised."""
    e = np.asarray(sentence_emb, np.float64)
    e = e / np.linalg.norm(e, axis=-1, keepdims=True)
    feats = np.stack([e[:n_normal].mean(0), e[n_normal:].mean(0)])
    return (feats / np.linalg.norm(feats, axis=-1, keepdims=True)).astype(np.float32)
