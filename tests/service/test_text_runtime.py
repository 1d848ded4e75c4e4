"""The text runtime: truncation, bucketing, and a bucketed padded batch equal to one-by-one."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import models
from service.errors import InputError
from service.runtimes import DecodeLimits
from service.runtimes.text import TextClassifierRuntime, TextEmbedderRuntime, length_buckets
from service.schemas import TextParameters
from tests.conftest import TINY_MAX_TOKENS, make_text_artifact


def runtime_for(tmp_path: Path, name: str) -> TextClassifierRuntime:
    path = make_text_artifact(tmp_path, name)
    module, manifest = models.load(path)
    runtime_class = TextEmbedderRuntime if manifest["task"] == "text-embedding" else TextClassifierRuntime
    runtime = runtime_class(manifest, DecodeLimits(10**6), tokenizer=models.load_tokenizer(path, manifest))
    runtime.attach(module, torch.device("cpu"), torch.float32)
    return runtime


@given(st.lists(st.integers(1, 512), max_size=64))
def test_length_buckets_group_similar_lengths(lengths: list[int]) -> None:
    buckets = length_buckets(lengths)
    assert sorted(i for bucket in buckets for i in bucket) == list(range(len(lengths)))
    for bucket in buckets:
        group = [lengths[i] for i in bucket]
        assert max(group) <= 1.5 * min(group)
    # as few buckets as that allows: in length order, each starts where joining the one before would stretch it
    ordered = sorted(buckets, key=lambda bucket: min(lengths[i] for i in bucket))
    for before, after in itertools.pairwise(ordered):
        assert max(lengths[i] for i in after) > 1.5 * min(lengths[i] for i in before)


@pytest.mark.parametrize("name", ["tiny-lstm", "tiny-gru", "tiny-transformer", "tiny-embedder"])
def test_batched_equals_one_by_one(tmp_path: Path, name: str) -> None:
    runtime = runtime_for(tmp_path, name)
    texts = ["not bad", "a gripping , funny and moving film that i loved", "dull", "a waste of time", "worse"]
    items = [runtime.decode_text(text, i) for i, text in enumerate(texts)]
    together = runtime.forward(items)
    for item, result in zip(items, together, strict=True):
        assert np.allclose(result.vector, runtime.forward([item])[0].vector, atol=1e-5)
        assert result.tokens == len(item.ids)


def test_truncation_is_reported(tmp_path: Path) -> None:
    runtime = runtime_for(tmp_path, "tiny-lstm")
    short = runtime.decode_text("not bad at all", 0)
    long = runtime.decode_text("a waste of time " * 10, 1)
    assert not short.truncated and len(short.ids) == 4
    assert long.truncated and len(long.ids) == TINY_MAX_TOKENS
    assert runtime.encode(runtime.forward([long])[0], TextParameters(top_k=2))["truncated"] is True


@pytest.mark.parametrize("bad", ["", "   ", 3, None, ["a"]])
def test_empty_and_non_strings_are_input_errors(tmp_path: Path, bad: object) -> None:
    runtime = runtime_for(tmp_path, "tiny-gru")
    with pytest.raises(InputError, match=r"inputs\[4\]"):
        runtime.decode_text(bad, 4)


def test_bytes_must_be_utf8(tmp_path: Path) -> None:
    runtime = runtime_for(tmp_path, "tiny-gru")
    assert runtime.decode_bytes(b"dull", 0).ids == runtime.decode_text("dull", 0).ids
    with pytest.raises(InputError, match="UTF-8"):
        runtime.decode_bytes(b"\xff\xfe", 0)
