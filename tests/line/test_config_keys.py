"""Config keys that never did anything are refused by name, not silently accepted."""

import pytest

from runtime.errors import AgptError
from runtime.line.config import parse_config

BASE = {"bundle": "models/x", "product": "p", "camera": {"kind": "synthetic", "source": "noise"}}


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"mask_encoding": "png"}, "mask_encoding: removed"),
        ({"backend": {"inter_op_threads": 2}}, "backend.inter_op_threads: removed"),
    ],
)
def test_a_removed_key_is_named(extra, named):
    with pytest.raises(AgptError, match=named):
        parse_config({**BASE, **extra}, where="line.yaml")


def test_an_unknown_key_is_still_refused():
    with pytest.raises(AgptError, match="mask_encodin"):
        parse_config({**BASE, "mask_encodin": "png"})


def test_the_base_config_parses():
    assert parse_config(BASE).product == "p"
