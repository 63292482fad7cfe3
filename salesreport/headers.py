"""A request's headers read straight from its ASGI scope, for the paths every request takes.

Starlette's ``Headers`` decodes every header's name for each look-up (and lists them all for an
``in``): about a microsecond a look, and a POST looks at half a dozen. Here one pass over the raw
pairs finds the first value of each name asked for, as ``Headers.get`` would (ASGI servers give
names in lower case).
"""

from __future__ import annotations

from starlette.types import Scope


def first(scope: Scope, *names: bytes) -> list[str | None]:
    """The first value of each of ``names`` (lower case), None for a name not sent."""
    found: list[str | None] = [None] * len(names)
    for name, value in scope["headers"]:
        if name in names:
            i = names.index(name)
            if found[i] is None:
                found[i] = value.decode("latin-1")
    return found
