"""salesreport: collect every sale of a retail chain and report on them."""

__version__ = "1.0.0"
