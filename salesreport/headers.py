"""A request's headers read straight from its ASGI scope.

Starlette's ``Headers`` decodes every header's name for each look-up (and lists them all for an
``in``): about a microsecond a look, and a POST looks at half a dozen. Here one pass over the raw
pairs finds what is asked for (ASGI servers give names in lower case).
"""

from __future__ import annotations

from starlette.types import Scope

# The longest list header read whole (``joined``): a browser set to many languages sends an
# Accept-Language of 200 characters or more; the service's own script sends one ETag.
MAX_HEADER = 1000


def first(scope: Scope, *names: bytes) -> list[str | None]:
    """The first value of each of ``names`` (lower case), None for a name not sent (as ``Headers.get``)."""
    found: list[str | None] = [None] * len(names)
    for name, value in scope["headers"]:
        if name in names:
            i = names.index(name)
            if found[i] is None:
                found[i] = value.decode("latin-1")
    return found


def joined(scope: Scope, name: bytes) -> str:
    """A list header (``Accept``, ``If-None-Match``...), its lines joined (RFC 9110); "" (as if not
    sent) if longer than ``MAX_HEADER``: parsing a value cut short could drop an entry's ``q=0``, and
    a long value would be parsed (and kept in a cache of parsed values) on every request."""
    values = [value.decode("latin-1") for key, value in scope["headers"] if key == name]
    value = values[0] if len(values) == 1 else ",".join(values)
    return value if len(value) <= MAX_HEADER else ""
