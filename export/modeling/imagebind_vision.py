"""ImageBind-Huge vision tower as AnomalyGPT uses it (reference doc, section 2), plain and batch-first.

    x (B,3,224,224) -> patchify (Conv2d, stride 14) -> (B,256,D) -> [CLS] + tokens -> + pos_embed
    -> LayerNorm -> blocks 0..depth-1 (taps: residual stream after the tap blocks, CLS dropped)
    -> LayerNorm -> CLS -> Linear (no bias) -> L2 normalise -> emb (B,E)

The stem: ImageBind repeats the image into 2 frames and applies Conv3d(kernel (2,14,14), stride (2,14,14)).
Both frames are the same image, so the Conv3d output equals a Conv2d whose kernel is the Conv3d kernel
summed over its time axis. That saves the repeat and half the stem arithmetic and changes nothing else
(tests/export/test_modeling.py checks it against F.conv3d).
"""

from __future__ import annotations

import torch
from torch import nn

from export.modeling.transformer import LN_EPS, Block, count_blocks, heads_for_width, l2_normalise, strip

PRE = "modality_preprocessors.vision."
TRUNK = "modality_trunks.vision."
HEAD = "modality_heads.vision."
STEM_KEY = PRE + "rgbt_stem.proj.1.weight"


def default_tap_layers(depth: int) -> list[int]:
    """Blocks after which AnomalyGPT reads the residual stream: 7, 15, 23, 31 for depth 32."""
    return [(depth // 4) * (k + 1) - 1 for k in range(4)]


def stem_weight_2d(w3d: torch.Tensor) -> torch.Tensor:
    """Conv3d kernel (D,3,T,p,p) on T identical frames == Conv2d kernel (D,3,p,p) summed over T."""
    return w3d.sum(dim=2)


class ImageBindVision(nn.Module):
    def __init__(
        self,
        width: int,
        depth: int,
        heads: int,
        mlp: int,
        embed: int,
        patch: int = 14,
        n_pos: int = 257,
        tap_layers: list[int] | None = None,
    ):
        super().__init__()
        self.width, self.depth, self.heads, self.embed, self.patch = width, depth, heads, embed, patch
        self.grid = int(round((n_pos - 1) ** 0.5))
        if self.grid**2 != n_pos - 1:
            raise ValueError(f"pos_embed has {n_pos} positions: not 1 + a square grid")
        self.image_size = self.grid * patch
        self.tap_layers = list(tap_layers if tap_layers is not None else default_tap_layers(depth))
        if any(not 0 <= t < depth for t in self.tap_layers):
            raise ValueError(f"tap layers {self.tap_layers} outside 0..{depth - 1}")
        self.stem = nn.Conv2d(3, width, kernel_size=patch, stride=patch, bias=False)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, n_pos, width))
        self.pre_norm = nn.LayerNorm(width, eps=LN_EPS)
        self.blocks = nn.ModuleList(Block(width, heads, mlp) for _ in range(depth))
        self.head_norm = nn.LayerNorm(width, eps=LN_EPS)
        self.head = nn.Linear(width, embed, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x (B,3,224,224) normalised image -> emb (B,E) L2-normalised, taps [(B,256,D)] with CLS dropped."""
        B = x.shape[0]
        t = self.stem(x).flatten(2).transpose(1, 2)  # (B,D,16,16) -> (B,256,D), patch index = row*16 + col
        t = torch.cat([self.cls_token.expand(B, -1, -1), t], dim=1) + self.pos_embed
        t = self.pre_norm(t)
        taps = []
        for i, block in enumerate(self.blocks):
            t = block(t)
            if i in self.tap_layers:
                taps.append(t[:, 1:, :])  # raw residual stream, no norm; CLS dropped
        emb = self.head(self.head_norm(t[:, 0, :]))  # LayerNorm is per token: norm all then take CLS == take CLS then norm
        return l2_normalise(emb), taps

    @classmethod
    def from_state(
        cls, vision: dict[str, torch.Tensor], heads: int | None = None, tap_layers: list[int] | None = None
    ) -> ImageBindVision:
        """Build from the checkpoint's vision keys (full names, as export.checkpoints.ImageBindParts.vision).

        Every size comes from tensor shapes; the head count is not stored, see heads_for_width.
        """
        w3d = vision[STEM_KEY]
        width, _, _, patch, _ = w3d.shape
        depth = count_blocks(vision, TRUNK + "blocks.")
        mlp = vision[TRUNK + "blocks.0.mlp.fc1.weight"].shape[0]
        embed = vision[HEAD + "2.weight"].shape[0]
        n_pos = vision[PRE + "pos_embedding_helper.pos_embed"].shape[1]
        m = cls(width, depth, heads or heads_for_width(width), mlp, embed, patch, n_pos, tap_layers)
        state = {
            "stem.weight": stem_weight_2d(w3d.float()),
            "cls_token": vision[PRE + "cls_token"],
            "pos_embed": vision[PRE + "pos_embedding_helper.pos_embed"],
            "pre_norm.weight": vision[TRUNK + "pre_transformer_layer.0.weight"],
            "pre_norm.bias": vision[TRUNK + "pre_transformer_layer.0.bias"],
            **{"blocks." + k: v for k, v in strip(vision, TRUNK + "blocks.").items()},
            "head_norm.weight": vision[HEAD + "0.weight"],
            "head_norm.bias": vision[HEAD + "0.bias"],
            "head.weight": vision[HEAD + "2.weight"],
        }
        m.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
        return m.eval()
