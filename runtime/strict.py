"""The base of every config block: a typo in a key ("fps_limt") is an error naming it, never a silent default.
(A leaf: imports nothing of ours, so every wing can build its config on it.)"""

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
