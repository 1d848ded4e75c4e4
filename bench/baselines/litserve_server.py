"""LitServe baseline: LitServe's own dynamic batching over the same weights and preprocessing.

``python -m bench.baselines.litserve_server --port 8002 --torch-threads 1 --max-batch-size 32 --max-delay-ms 2``
"""

# No ``from __future__ import annotations``: LitServe hands decode_request's annotation to FastAPI as a type.
from typing import Annotated, Any

import litserve as ls
import numpy as np
from fastapi import Body

from bench.baselines import common


class MnistAPI(ls.LitAPI):
    def __init__(self, args: Any) -> None:
        super().__init__(max_batch_size=args.max_batch_size, batch_timeout=args.max_delay_ms / 1000,
                         api_path=common.PREDICT_PATH)
        self.args = args

    def setup(self, device: str) -> None:
        self.module, self.labels = common.load(self.args.weights, self.args.torch_threads)

    def decode_request(self, request: Annotated[bytes, Body(media_type="image/png")]) -> np.ndarray:
        return common.decode_png(request)

    def batch(self, inputs: list[np.ndarray]) -> np.ndarray:
        return np.stack(inputs)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return common.probabilities(self.module, x)

    def unbatch(self, output: np.ndarray) -> list[np.ndarray]:
        return list(output)

    def encode_response(self, output: np.ndarray) -> dict[str, Any]:
        return {"model": "mnist-cnn", "version": 1, "predictions": [common.encode(output, self.labels)]}


def main() -> None:
    args = common.parse_args(__doc__ or "", batching=True)
    server = ls.LitServer(MnistAPI(args), accelerator="cpu", devices=1, workers_per_device=args.workers, timeout=10)
    server.run(host=args.host, port=args.port, log_level="warning", generate_client_file=False, access_log=False)


if __name__ == "__main__":
    main()
