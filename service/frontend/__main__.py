"""``python -m service.frontend --fd N``: one HTTP front-end process on a listening socket that the
supervisor (``python -m service``) opened and shares among its front-ends. Settings come from ``SERVE_*``."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import threading
import time

import uvicorn

from service.frontend.drain import DrainingServer
from service.frontend.main import app_from_environment
from service.settings import Settings


def stop_when_orphaned() -> None:
    """A front-end whose supervisor died (even by SIGKILL) stops too, and frees the port."""
    parent = os.getppid()
    while os.getppid() == parent:
        time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGTERM)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m service.frontend", description=__doc__)
    parser.add_argument("--fd", type=int, required=True, help="the listening socket's file descriptor")
    args = parser.parse_args()
    settings = Settings()
    # Before any thread starts (threads inherit it): under load the inference thread, not HTTP, is what limits
    # the requests served, so it gets the cores first (measured on 2 cores, mnist-cnn, 64 connections: nice 0
    # let it run 80% of the time and served 610-630 req/s; nice 10, 86% and 660-690).
    os.nice(settings.nice)
    app = app_from_environment(settings)
    threading.Thread(target=stop_when_orphaned, name="orphan-watch", daemon=True).start()
    # The socket's own family and protocol (uvicorn's fd= assumes a Unix socket, and asyncio then leaves
    # Nagle's algorithm on for TCP connections: 40 ms stalls on small answers).
    listener = socket.socket(fileno=args.fd)
    config = uvicorn.Config(app, log_level=settings.log_level, log_config=None, access_log=False,
                            timeout_keep_alive=30)  # longer than clients keep idle connections: no reset on reuse
    DrainingServer(config, app, settings).run(sockets=[listener])


if __name__ == "__main__":
    main()
