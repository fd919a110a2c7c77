"""AnomalyGPT's prompt learner (reference doc, section 6) and PandaGPT's llama_proj (section 7).

PromptLearner: map M (B,1,224,224) -> meta_net -> (B,D,3,3) -> (B,9,D) (row-major cells)
               P = [base_prompts (9,D) for every image, then the 9 map prompts] -> (B,18,D).
meta_net is nn.Sequential [conv, ReLU, MaxPool2] x 5 + conv: the convs sit at indices 0,3,6,9,12,15
(the checkpoint's key numbers). The first five are 'same' convolutions (k3, padding 1), the last one is
k5 with no padding (7x7 -> 3x3). Channels and kernel sizes are read from the weight shapes.
"""

from __future__ import annotations

import torch
from torch import nn

from export.checkpoints import PROMPT_CONVS


class PromptLearner(nn.Module):
    def __init__(self, channels: list[int], kernels: list[int], n_base: int):
        super().__init__()
        layers: list[nn.Module] = []
        last = len(kernels) - 1
        for i, k in enumerate(kernels):
            layers.append(nn.Conv2d(channels[i], channels[i + 1], k, padding=0 if i == last else k // 2))
            if i != last:
                layers += [nn.ReLU(), nn.MaxPool2d(2)]
        self.meta_net = nn.Sequential(*layers)
        self.base_prompts = nn.Parameter(torch.zeros(n_base, channels[-1]))

    def forward(self, m: torch.Tensor) -> torch.Tensor:
        B = m.shape[0]
        cells = self.meta_net(m)  # (B,D,3,3)
        cells = cells.flatten(2).transpose(1, 2)  # (B,9,D), cell index = row*3 + col
        return torch.cat([self.base_prompts.expand(B, -1, -1), cells], dim=1)

    @classmethod
    def from_state(cls, pl: dict[str, torch.Tensor]) -> PromptLearner:
        """From AnomalyGptDelta.prompt_learner ({'base_prompts', 'meta_net.{i}.weight/bias'})."""
        ws = [pl[f"meta_net.{i}.weight"] for i in PROMPT_CONVS]
        channels = [ws[0].shape[1]] + [w.shape[0] for w in ws]
        m = cls(channels, [w.shape[-1] for w in ws], pl["base_prompts"].shape[0])
        m.load_state_dict({k: v.float() for k, v in pl.items()}, strict=True)
        return m.eval()


class LlamaProj(nn.Linear):
    """emb (B,E) -> E_img (B,1,D): ONE LLM input row per image."""

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return super().forward(emb)[:, None, :]

    @classmethod
    def from_weights(cls, weight: torch.Tensor, bias: torch.Tensor) -> LlamaProj:
        m = cls(weight.shape[1], weight.shape[0])
        m.load_state_dict({"weight": weight.float(), "bias": bias.float()}, strict=True)
        return m.eval()


class PromptGraph(nn.Module):
    """The graph exported as prompt.onnx: (map, emb) -> (prompts (B,18,D), img_embed (B,1,D))."""

    def __init__(self, learner: PromptLearner, proj: LlamaProj):
        super().__init__()
        self.learner, self.proj = learner, proj

    def forward(self, m: torch.Tensor, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.learner(m), self.proj(emb)
