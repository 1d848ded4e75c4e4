"""``python -m training <model-name> [--epochs N] [--out weights/] [--device auto]``.

Works under ``torchrun --nproc-per-node N -m training <model-name>`` (DDP: gloo on CPU, nccl on GPU).
"""

from __future__ import annotations

import argparse
import os

import torch

from training import (
    autoencoder,
    diffusion,
    forecaster,
    gan,
    image_classifier,
    import_minilm,
    language_model,
    text_classifier,
)

RECIPES = {name: image_classifier.train for name in image_classifier.RECIPES}
RECIPES |= {name: text_classifier.train for name in text_classifier.RECIPES}
RECIPES["import-minilm"] = lambda _name, args: import_minilm.run(args)
RECIPES[forecaster.NAME] = forecaster.train
RECIPES[autoencoder.NAME] = autoencoder.train
RECIPES[gan.NAME] = gan.train
RECIPES[diffusion.NAME] = diffusion.train
RECIPES |= {name: language_model.train for name in language_model.RECIPES}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    parser.add_argument("model", choices=sorted(RECIPES), help="the model to train")
    parser.add_argument("--epochs", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--batch-size", type=int, default=None, help="per process; default: the recipe's")
    parser.add_argument("--out", default="weights", help="weights root; a new version folder is written")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--limit", type=int, default=None, help="train on the first N examples only")
    parser.add_argument("--test-limit", type=int, default=None, help="evaluate on the first N only")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="wall-clock budget (language models; the best checkpoint so far is kept)")
    parser.add_argument("--checkpoint-dir", default=None,
                        help="save per-epoch checkpoints here and resume from them")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    threads = args.threads or (int(os.environ["OMP_NUM_THREADS"]) if "OMP_NUM_THREADS" in os.environ else None)
    if threads:
        torch.set_num_threads(threads)
    RECIPES[args.model](args.model, args)


if __name__ == "__main__":
    main()
