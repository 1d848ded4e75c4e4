"""The model server: ``python -m service`` or ``service.frontend.main.create_app(settings)``."""

__version__ = "0.1.0"
