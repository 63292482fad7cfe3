"""The app as the browser tests serve it (``granian --factory tests.browser_app:app``): the real app on
the database of ``DATABASE_URL``, with its clock stopped at ``SALESREPORT_TEST_NOW``, so that no
browser test depends on the wall clock."""

from __future__ import annotations

from datetime import datetime

from starlette.applications import Starlette

from salesreport import config
from salesreport.api import create_app


def app() -> Starlette:
    import os

    now = datetime.fromisoformat(os.environ["SALESREPORT_TEST_NOW"])
    return create_app(config.load(), clock=lambda: now)
