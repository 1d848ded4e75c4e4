"""Text modules and tokenizers: masking makes padding invisible; tokenizers round-trip through artifacts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import models
from models.text import build_word_tokenizer
from tests.conftest import SENTENCES, TEXT_CONFIGS, make_text_artifact


@pytest.mark.parametrize("name", sorted(TEXT_CONFIGS))
def test_a_padded_batch_equals_one_by_one(tmp_path: Path, name: str) -> None:
    module, _ = models.load(make_text_artifact(tmp_path, name))
    torch.manual_seed(0)
    lengths = torch.tensor([9, 2, 5, 1])
    ids = torch.randint(2, 20, (4, 12))
    for row, length in enumerate(lengths):
        ids[row, length:] = 0
    with torch.no_grad():
        together = module(ids, lengths)
        alone = torch.cat([module(ids[i:i + 1, : lengths[i]], lengths[i:i + 1]) for i in range(4)])
    assert torch.allclose(together, alone, atol=1e-5)


def test_word_tokenizer() -> None:
    tokenizer = build_word_tokenizer(SENTENCES)
    vocab = tokenizer.get_vocab()
    assert vocab["[PAD]"] == 0 and vocab["[UNK]"] == 1
    encoding = tokenizer.encode("A GRIPPING zebra!")
    assert encoding.tokens == ["a", "gripping", "[UNK]", "[UNK]"]
    assert encoding.ids[2:] == [1, 1]


def test_tokenizer_travels_with_the_artifact_and_is_hash_checked(tmp_path: Path) -> None:
    path = make_text_artifact(tmp_path, "tiny-lstm")
    _, manifest = models.load(path)
    tokenizer = models.load_tokenizer(path, manifest)
    assert tokenizer.encode("not bad at all").ids == build_word_tokenizer(SENTENCES).encode("not bad at all").ids
    (path / "tokenizer.json").write_text((path / "tokenizer.json").read_text().replace("loved", "hated"))
    with pytest.raises(models.ArtifactError, match="sha256"):
        models.load_tokenizer(path, manifest)


def test_embedder_output_is_unit_length(tmp_path: Path) -> None:
    module, _ = models.load(make_text_artifact(tmp_path, "tiny-embedder"))
    with torch.no_grad():
        vectors = module(torch.tensor([[2, 3, 4], [5, 0, 0]]), torch.tensor([3, 1]))
    assert vectors.shape == (2, 16) and torch.allclose(vectors.norm(dim=-1), torch.ones(2), atol=1e-5)
