"""The one engine protocol every backend implements: named numpy feeds in, named numpy outputs out."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from runtime.errors import AgptError
from runtime.pipeline.bundle import TensorSpec


class Engine(Protocol):
    path: Path
    inputs: list[TensorSpec]  # as the graph/engine declares them; dynamic axes as strings
    outputs: list[TensorSpec]

    @property
    def input_names(self) -> list[str]: ...

    @property
    def output_names(self) -> list[str]: ...

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class EngineBase:
    """Shared bits: names from the specs."""

    path: Path
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [s.name for s in self.outputs]

    def _check_feeds(self, feeds: dict[str, np.ndarray]) -> None:
        missing = set(self.input_names) - feeds.keys()
        extra = feeds.keys() - set(self.input_names)
        if missing or extra:
            raise AgptError(f"{self.path.name}: feeds {sorted(feeds)} do not match the graph inputs {self.input_names}")
