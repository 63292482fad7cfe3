"""From a POST body to a committed sale.

``parsing`` body to sales, and the rules a request keeps alone · ``catalog`` this
process's copy of products and stores · ``replay`` the one rule for a repeated
key, and how long keys live · ``plan`` one batch's decisions · ``batcher`` group
commit · ``errors`` how a POST fails short of being stored.
"""

from ..db import store_history
from ..schemas import SaleIn
from .batcher import Batcher
from .catalog import Catalog
from .errors import Malformed, Rejected, Unavailable
from .parsing import check_sales, explain, parse_sales
from .plan import Stored
from .replay import is_replay

__all__ = [
    "Batcher",
    "Catalog",
    "Malformed",
    "Rejected",
    "SaleIn",
    "Stored",
    "Unavailable",
    "check_sales",
    "explain",
    "is_replay",
    "parse_sales",
    "store_history",
]
