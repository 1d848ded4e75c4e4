"""``python -m service``: serve the models under SERVE_WEIGHTS_DIR: the supervisor starts one engine process
and SERVE_WORKERS HTTP front-ends (``--in-process true``: everything in one process, for development).

Every flag is a setting (``--port 9000`` is ``SERVE_PORT=9000``); flags win over the environment.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from pydantic import ValidationError

from service import tracing
from service.logging_setup import configure_logging
from service.settings import Settings, unknown_settings
from service.supervisor import Supervisor


def parse_overrides(argv: list[str]) -> dict[str, str]:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    for name, field in Settings.model_fields.items():
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None, help=field.description)
    args = parser.parse_args(argv)
    return {name: value for name, value in vars(args).items() if value is not None}


def describe(exc: ValidationError) -> str:
    """Each error as "setting: why", without the values (pydantic's own text quotes them: API keys too)."""
    lines = []
    for error in exc.errors(include_input=False, include_url=False):
        where = ".".join(str(part) for part in error["loc"])
        lines.append(f"  {where or 'settings'}: {error['msg']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    overrides = parse_overrides(sys.argv[1:] if argv is None else argv)
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise SystemExit("invalid settings:\n" + describe(exc)) from None
    configure_logging(settings.log_level, settings.log_format)
    for warning in unknown_settings(os.environ):  # here only: the processes it starts read the same variables
        logging.getLogger("service").warning(warning)
    if settings.in_process:
        import uvicorn

        from service.frontend.drain import DrainingServer
        from service.frontend.main import create_app

        tracing.setup("server")
        app = create_app(settings)
        config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                                log_config=None, access_log=False, timeout_keep_alive=30)
        DrainingServer(config, app, settings).run()  # the same drain on SIGTERM as the front-end processes
        return
    Supervisor(settings, overrides).run()


if __name__ == "__main__":
    main()
