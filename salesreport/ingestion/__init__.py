"""From a POST body to a committed sale or return.

``parsing`` body to sales (or returns), and the rules a request keeps alone ·
``catalog`` this process's copy of products, prices and stores · ``replay`` the
one rule for a repeated key, and how long keys live · ``plan`` one batch of
sales' decisions · ``returns`` one batch of returns' · ``batcher`` group commit ·
``errors`` how a POST fails short of being stored.
"""

from ..db import store_history
from ..schemas import SaleIn
from .batcher import Batcher
from .catalog import Catalog
from .errors import Malformed, Rejected, Unavailable
from .parsing import check_returns, check_sales, explain, parse_returns, parse_sales
from .plan import Stored, sale_out
from .replay import is_replay
from .returns import ReturnPlan, return_out

__all__ = [
    "Batcher",
    "Catalog",
    "Malformed",
    "Rejected",
    "ReturnPlan",
    "SaleIn",
    "Stored",
    "Unavailable",
    "check_returns",
    "check_sales",
    "explain",
    "is_replay",
    "parse_returns",
    "parse_sales",
    "return_out",
    "sale_out",
    "store_history",
]
