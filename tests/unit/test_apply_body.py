"""What a server-side apply sends: JSON the API server's YAML reader takes back unchanged,
whatever characters a spec holds (the reader refuses surrogate-pair escapes and raw control
characters, and reads NEL and the Unicode line separators as line breaks)."""

from __future__ import annotations

import json

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from dedicap.controller.kube import apply_body

NASTY = ["🦀 crab", "del\x7f", "c1\x80\x9f", "nel\x85", "ls\u2028ps\u2029", "bom\ufeff",
         "tab\tnl\ncr\r", 'quote" back\\slash', "nul\x00bell\x07", "é€", "\ufffd"]


@pytest.mark.parametrize("value", NASTY, ids=ascii)
def test_yaml_reads_back_what_was_sent(value: str) -> None:
    obj = {"kind": "Deployment", "metadata": {"name": "n", "annotations": {value: value}},
           "spec": {"args": [value]}}
    body = apply_body(obj)
    assert yaml.safe_load(body.decode()) == obj
    assert json.loads(body) == obj


@settings(max_examples=200, deadline=None)
@given(st.text(st.characters(exclude_categories=("Cs",))))
def test_any_text_survives(value: str) -> None:
    obj = {"v": value}
    assert yaml.safe_load(apply_body(obj).decode()) == obj
