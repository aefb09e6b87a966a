"""Shared fixtures: a tiny built-in base pre-trained once per test session in a private cache."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(2)

# a few steps on short windows: enough for the pipeline, cheap enough for CI
TINY_BUILTIN = {"size": "small", "steps": 8, "batch_size": 4, "seq_len": 64}
# a study's evaluation at its smallest: greedy, a few tokens, a little forgetting, no latency
TINY_EVALUATION = {
    "n_samples": 0,
    "k": [1],
    "max_new_tokens": 6,
    "latency": None,
    "forgetting": {"n_chunks": 2, "chunk_tokens": 32},
}


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("ftcompare-cache")


@pytest.fixture(autouse=True)
def _private_cache(cache_dir, monkeypatch):
    monkeypatch.setenv("FTCOMPARE_CACHE", str(cache_dir))


@pytest.fixture(scope="session")
def tiny_base(cache_dir):
    """(model directory, provenance) of a tiny built-in base, pre-trained once for the whole session."""
    import json
    import os

    from ftcompare.config import BuiltinPretraining
    from ftcompare.console import console
    from ftcompare.models.builtin import pretrain_builtin

    previous = os.environ.get("FTCOMPARE_CACHE")
    os.environ["FTCOMPARE_CACHE"] = str(cache_dir)
    try:
        directory = pretrain_builtin(BuiltinPretraining(**TINY_BUILTIN), torch.device("cpu"), console)
    finally:
        if previous is None:
            os.environ.pop("FTCOMPARE_CACHE")
        else:
            os.environ["FTCOMPARE_CACHE"] = previous
    return directory, json.loads((directory / "provenance.json").read_text())
