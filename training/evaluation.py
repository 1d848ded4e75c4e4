"""Held-out quality measures shared by recipes: AUROC, and agreement with the committed classifier."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

import models
from training import common


def auroc(normal_scores: np.ndarray, anomaly_scores: np.ndarray) -> float:
    """Area under the ROC curve: the chance an anomaly scores above a normal example (ties count half)."""
    scores = np.concatenate([normal_scores, anomaly_scores])
    order = scores.argsort(kind="mergesort")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    for value in np.unique(scores[np.diff(np.sort(scores), prepend=np.nan) == 0]):  # average tied ranks
        tied = scores == value
        ranks[tied] = ranks[tied].mean()
    n_normal, n_anomaly = len(normal_scores), len(anomaly_scores)
    return float((ranks[n_normal:].sum() - n_anomaly * (n_anomaly + 1) / 2) / (n_normal * n_anomaly))


@torch.no_grad()
def judge(images: torch.Tensor, weights_root: Path, name: str = "mnist-cnn") -> tuple[np.ndarray, np.ndarray]:
    """(predicted class, confidence) per image [N, 1, 28, 28] from the latest ``name`` under ``weights_root``,
    or else the repository's committed one."""
    root = weights_root if (weights_root / name).is_dir() else common.REPO_ROOT / "weights"
    classifier, _ = models.load(common.latest_version_dir(root, name))
    probabilities = torch.softmax(classifier(images.float().cpu()), dim=-1)
    confidence, predicted = probabilities.max(dim=-1)
    return predicted.numpy(), confidence.numpy()
