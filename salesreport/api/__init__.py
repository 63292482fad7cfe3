"""The HTTP API: the routes, who may call them, and the app's life cycle.

``access`` who may call a route · ``catalog`` products and stores · ``sales``
``POST /sales``, ``POST /returns`` and ``GET /sales/{id}`` · ``reports`` the
reports · ``routes`` the route table, with ``/metrics`` and ``/openapi.json`` ·
``app`` ``create_app``: the service's parts and their life cycle.
"""

from .app import create_app
from .sales import MAX_BODY

__all__ = ["MAX_BODY", "create_app"]
