"""ImageBind-Huge text tower (reference doc, section 3), plain and batch-first.

    tokens (N,77) int64 -> token_embedding + pos_embed -> causal blocks -> LayerNorm
    -> row at the EOT position (argmax of the token ids: EOT 49407 is the largest id)
    -> Linear (no bias) -> L2 normalise -> (N,E)

The logit scale of ImageBind's text postprocessor is not applied: it multiplies both classes alike and
the decoder map re-normalises, so it cancels (and the embedding here is the normalised one).
"""

from __future__ import annotations

import torch
from torch import nn

from export.modeling.transformer import LN_EPS, Block, count_blocks, heads_for_width, l2_normalise, strip
from runtime.errors import AgptError

PRE = "modality_preprocessors.text."
TRUNK = "modality_trunks.text."
HEAD = "modality_heads.text."


def causal_mask(n: int) -> torch.Tensor:
    """Additive (n,n) mask: 0 on and below the diagonal, -inf above (ImageBind's build_causal_attention_mask)."""
    return torch.full((n, n), float("-inf")).triu_(1)


class ImageBindText(nn.Module):
    def __init__(self, vocab: int, context: int, width: int, depth: int, heads: int, mlp: int, embed: int):
        super().__init__()
        self.context, self.width, self.embed = context, width, embed
        self.token_embedding = nn.Embedding(vocab, width)
        self.pos_embed = nn.Parameter(torch.zeros(1, context, width))
        self.register_buffer("mask", causal_mask(context), persistent=False)
        self.blocks = nn.ModuleList(Block(width, heads, mlp) for _ in range(depth))
        self.head_norm = nn.LayerNorm(width, eps=LN_EPS)
        self.head = nn.Linear(width, embed, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        N, L = tokens.shape
        x = self.token_embedding(tokens) + self.pos_embed[:, :L]
        mask = self.mask[:L, :L]
        for block in self.blocks:
            x = block(x, mask)
        x = self.head_norm(x)
        # EOT row per sentence. A one-hot product instead of fancy indexing: the same numbers (one 1.0, the
        # rest 0), exported as ArgMax, Equal, Cast, MatMul, which every runtime and TensorRT take as is.
        # argmax over int32 ids (all < 49408): TensorRT's ArgMax takes no int64, and a float cast could
        # round 49407 in an fp16 graph and tie with other ids.
        eot = tokens.to(torch.int32).argmax(dim=-1)  # (N,) EOT 49407 is the largest id; first max wins
        pick = (torch.arange(L, device=tokens.device)[None, :] == eot[:, None]).to(x.dtype)  # (N,L)
        x = (pick[:, None, :] @ x)[:, 0, :]  # (N,D)
        return l2_normalise(self.head(x))

    @classmethod
    def from_state(cls, text: dict[str, torch.Tensor], heads: int | None = None) -> ImageBindText:
        """Build from the checkpoint's text keys (full names, as export.checkpoints.ImageBindParts.text)."""
        vocab, width = text[PRE + "token_embedding.weight"].shape
        context = text[PRE + "pos_embed"].shape[1]
        depth = count_blocks(text, TRUNK + "blocks.")
        mlp = text[TRUNK + "blocks.0.mlp.fc1.weight"].shape[0]
        embed = text[HEAD + "proj.1.weight"].shape[0]
        m = cls(vocab, context, width, depth, heads or heads_for_width(width), mlp, embed)
        stored = text.get(PRE + "mask")
        if stored is not None and not torch.equal(stored.float(), m.mask):
            raise AgptError(f"text tower: {PRE}mask is not the causal mask this tower assumes")
        state = {
            "token_embedding.weight": text[PRE + "token_embedding.weight"],
            "pos_embed": text[PRE + "pos_embed"],
            **{"blocks." + k: v for k, v in strip(text, TRUNK + "blocks.").items()},
            "head_norm.weight": text[HEAD + "proj.0.weight"],
            "head_norm.bias": text[HEAD + "proj.0.bias"],
            "head.weight": text[HEAD + "proj.1.weight"],
        }
        m.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
        return m.eval()
