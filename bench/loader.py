"""Load sales history through the service's bulk path (``store_history``).

``demo --sales N`` refuses a database that already has a catalog, so the
benchmark loads its history with this instead: the same generator
(``salesreport.demo.sales``) and the same code path as ``_demo`` in
``salesreport/cli/data.py``, priced from the catalog CSVs that were imported::

    DATABASE_URL=postgresql://... python bench/loader.py \
        --products products.csv --stores stores.csv --sales 1000000
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from salesreport import catalog, config, db, demo  # noqa: E402
from salesreport.ingestion import store_history  # noqa: E402

CHUNK = 50_000


async def load(
    settings: config.Settings, stores: list[dict[str, Any]], products: list[dict[str, Any]], count: int, seed: int
) -> None:
    database = db.connect(settings)
    started = time.perf_counter()
    done = 0
    try:
        chunk: list[dict[str, Any]] = []
        for row in demo.sales(stores, products, count, now=datetime.now(UTC), seed=seed):
            chunk.append(row)
            if len(chunk) == CHUNK:
                async with database.writer.begin() as conn:
                    await store_history(conn, chunk)
                done += len(chunk)
                chunk = []
                if done % 500_000 == 0:
                    rate = done / (time.perf_counter() - started)
                    print(f"    loaded {done:,} sales ({rate:,.0f}/s)", file=sys.stderr, flush=True)
        if chunk:
            async with database.writer.begin() as conn:
                await store_history(conn, chunk)
            done += len(chunk)
    finally:
        await database.dispose()
    elapsed = time.perf_counter() - started
    print(f"    loaded {done:,} sales in {elapsed:.1f} s ({done / elapsed:,.0f} sales/s)", file=sys.stderr, flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--products", type=Path, required=True, help="the products CSV that was imported")
    p.add_argument("--stores", type=Path, required=True, help="the stores CSV that was imported")
    p.add_argument("--sales", type=int, required=True, help="number of sales to add")
    p.add_argument("--seed", type=int, default=3)
    args = p.parse_args()
    # Parsed by the project's own CSV reader: prices in cents exactly as imported.
    products = catalog.read_csv(args.products, catalog.PRODUCT_COLUMNS)
    stores = catalog.read_csv(args.stores, catalog.STORE_COLUMNS)
    asyncio.run(load(config.load(), stores, products, args.sales, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
