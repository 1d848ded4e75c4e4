"""Naive baseline: plain FastAPI, Pillow decode and one forward per request, no batching.

The endpoint is sync, so FastAPI runs each request's decode and forward in its threadpool.
``python -m bench.baselines.naive_fastapi --port 8001 --torch-threads 1``
"""

import argparse
import json
import os
from pathlib import Path
from typing import Annotated, Any

import uvicorn
from fastapi import Body, FastAPI

from bench.baselines import common


def create_app(args: Any) -> FastAPI:
    module, labels = common.load(args.weights, args.torch_threads)
    app = FastAPI()

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post(common.PREDICT_PATH)
    def predict(body: Annotated[bytes, Body(media_type="image/png")]) -> dict[str, Any]:
        probs = common.probabilities(module, common.decode_png(body)[None])[0]
        return {"model": "mnist-cnn", "version": 1, "predictions": [common.encode(probs, labels)]}

    return app


def app_from_environment() -> FastAPI:
    """Each worker process's factory (``--workers`` > 1): the arguments come through the environment."""
    values = json.loads(os.environ["NAIVE_FASTAPI_ARGS"])
    return create_app(argparse.Namespace(**{**values, "weights": Path(values["weights"])}))


def main() -> None:
    args = common.parse_args(__doc__ or "")
    if args.workers == 1:
        uvicorn.run(create_app(args), host=args.host, port=args.port, log_level="warning", access_log=False)
        return
    os.environ["NAIVE_FASTAPI_ARGS"] = json.dumps({**vars(args), "weights": str(args.weights)})
    uvicorn.run("bench.baselines.naive_fastapi:app_from_environment", factory=True, workers=args.workers,
                host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
