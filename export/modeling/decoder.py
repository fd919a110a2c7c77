"""AnomalyGPT's unsupervised map (reference doc, section 4): taps x text features -> M_dec (B,1,224,224).

Per tap k: t = fc_k(tap_k) (B,N,E) -> t / ||t|| -> logits = 100 * t @ text_feats^T (B,N,2)
-> (B,2,h,w) -> bilinear upsample of the LOGITS to 224 (align_corners=True) -> softmax over the 2
classes -> channel 1 (abnormal). M_dec = mean over taps, in (0,1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from export.modeling.transformer import l2_normalise

LOGIT_SCALE = 100.0


class Decoder(nn.Module):
    """The 4 Linear layers, keyed fc.{k}.weight/bias as image_decoder.fc.* in the AnomalyGPT delta."""

    def __init__(self, widths: list[int], embed: int):
        super().__init__()
        self.fc = nn.ModuleList(nn.Linear(w, embed) for w in widths)

    def forward(self, taps: list[torch.Tensor]) -> list[torch.Tensor]:
        return [fc(t) for fc, t in zip(self.fc, taps)]

    @classmethod
    def from_state(cls, decoder: dict[str, torch.Tensor]) -> Decoder:
        """From AnomalyGptDelta.decoder ({'fc.k.weight', 'fc.k.bias'})."""
        n = len({k.split(".")[1] for k in decoder})
        ws = [decoder[f"fc.{k}.weight"] for k in range(n)]
        m = cls([w.shape[1] for w in ws], ws[0].shape[0])
        m.load_state_dict({k: v.float() for k, v in decoder.items()}, strict=True)
        return m.eval()


def _grid(n: int) -> tuple[int, int]:
    h = int(round(n**0.5))
    if h * h != n:
        raise ValueError(f"{n} patches is not a square grid")
    return h, h


def decoder_map(projected: list[torch.Tensor], text_feats: torch.Tensor, size: int = 224) -> torch.Tensor:
    """projected taps [(B,N,E)] (Decoder output) and text_feats (2,E) [normal, abnormal] -> (B,1,size,size)."""
    maps = []
    for t in projected:
        B, N, _ = t.shape
        h, w = _grid(N)
        logits = LOGIT_SCALE * l2_normalise(t) @ text_feats.transpose(0, 1)  # (B,N,2)
        logits = logits.transpose(1, 2).reshape(B, 2, h, w)
        logits = F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=True)
        maps.append(logits.softmax(dim=1)[:, 1:2])  # (B,1,size,size) abnormal probability
    return torch.stack(maps).mean(dim=0)


def decoder_map_fast(projected: list[torch.Tensor], text_feats: torch.Tensor, size: int = 224) -> torch.Tensor:
    """decoder_map rewritten, same math: softmax over 2 classes is sigmoid(l1 - l0), and bilinear upsampling
    is linear, so upsample(l1) - upsample(l0) = upsample(100 * t . (tf1 - tf0)). One channel to upsample
    and no 2-way softmax (ONNX Runtime spends most of the graph's time on that Softmax)."""
    diff = (text_feats[1] - text_feats[0])[:, None]  # (E,1)
    maps = []
    for t in projected:
        B, N, _ = t.shape
        h, w = _grid(N)
        logit = (LOGIT_SCALE * l2_normalise(t) @ diff).transpose(1, 2).reshape(B, 1, h, w)
        maps.append(torch.sigmoid(F.interpolate(logit, size=(size, size), mode="bilinear", align_corners=True)))
    return torch.stack(maps).mean(dim=0)


class DecoderMap(nn.Module):
    """The graph exported as decoder.onnx: (tap0..tap3, text_feats) -> map (B,1,224,224), in the fast form
    (tests check it against the reference form, decoder_map)."""

    def __init__(self, decoder: Decoder, size: int = 224):
        super().__init__()
        if len(decoder.fc) != 4:
            raise ValueError(f"decoder has {len(decoder.fc)} layers, the graph takes 4 taps")
        self.decoder, self.size = decoder, size

    def forward(self, tap0, tap1, tap2, tap3, text_feats):
        return decoder_map_fast(self.decoder([tap0, tap1, tap2, tap3]), text_feats, self.size)
