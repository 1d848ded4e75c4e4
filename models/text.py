"""Tokenizers for the text models (the fast ``tokenizers`` package), built from data or imported."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import WordLevel

PAD, UNK = "[PAD]", "[UNK]"


def build_word_tokenizer(texts: Iterable[str], min_freq: int = 1, max_size: int | None = None) -> Tokenizer:
    """A lower-casing word-level tokenizer (punctuation split off) whose vocabulary comes from ``texts``.

    Id 0 is padding and id 1 the unknown word, so models can use ``padding_idx=0``.
    """
    normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    counts: Counter[str] = Counter()
    for text in texts:
        words = pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))
        counts.update(word for word, _ in words)
    kept = [word for word, count in counts.most_common(max_size) if count >= min_freq]
    vocab = {PAD: 0, UNK: 1, **{word: index + 2 for index, word in enumerate(sorted(kept))}}
    tokenizer = Tokenizer(WordLevel(vocab, unk_token=UNK))
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    return tokenizer


def plain(tokenizer: Tokenizer) -> Tokenizer:
    """The tokenizer without its own padding or truncation: the runtime pads and truncates itself."""
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def load_tokenizer(path: str | Path, manifest: dict[str, Any]) -> Any:
    """The artifact's tokenizer (``tokenizers.Tokenizer``, without padding/truncation), or None."""
    from models.artifact import read_tokenizer_json

    text = read_tokenizer_json(Path(path), manifest)
    return None if text is None else plain(Tokenizer.from_str(text))
