"""``python -m service.engine``: one engine process (started by the supervisor, ``python -m service``)."""

from service.engine.process import main

if __name__ == "__main__":
    main()
