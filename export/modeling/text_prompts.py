"""The prompt ensemble AnomalyGPT's code uses for text features (reference doc, section 3).

7 normal states and 5 abnormal states, each in 2 templates: 14 + 10 sentences per product. The sentence
embeddings (L2-normalised) are averaged per class and the mean is L2-normalised again:
text_feats (2,E) = [normal, abnormal]. Constant per product, so computed once at export / set-up.
The sentence lists are importable without torch (the runtime may tokenize them elsewhere).
"""

from __future__ import annotations

import numpy as np

from runtime.pipeline.text_ensemble import (  # noqa: F401  (re-exported: the ensemble is defined once, in the runtime)
    ABNORMAL_STATES,
    FALLBACK_NAME,
    NORMAL_STATES,
    TEMPLATES,
    class_means,
    class_sentences,
)


def text_features(text_model, product_name: str | None) -> np.ndarray:
    """(2,E) float32 [normal, abnormal] from a torch text tower (export.modeling.imagebind_text.ImageBindText)."""
    import torch

    from export.modeling.clip_tokenizer import tokenize

    normal, abnormal = class_sentences(product_name)
    tokens = torch.from_numpy(tokenize(normal + abnormal, context=text_model.context))
    with torch.no_grad():
        emb = text_model(tokens).double().numpy()
    return class_means(emb, len(normal))
