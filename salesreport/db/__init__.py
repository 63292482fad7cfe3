"""The data layer: the schema, the engines, and the SQL that reads and writes them.

``schema`` the tables · ``engines`` connections and which errors mean "away" ·
``catalog`` products, stores, change counters · ``rollups`` aggregates and the
bulk path · ``batch`` the steps of a batch's transaction, run by ``postgres``
and ``sqlite``, each database's writer.
"""

from .batch import BatchJob, Key, Row
from .catalog import (
    CHANNEL,
    VERSIONED,
    bump_version,
    get_version,
    list_products,
    list_stores,
    save_catalog,
    schema_revision,
)
from .engines import Database, connect, driver_connection, is_unavailable, sqlstate, upsert, writer_slot
from .postgres import write_batch as _write_postgres
from .rollups import add_to_rollups, aggregate, insert_sales_bulk, store_history
from .schema import (
    ROLLUP_LIMIT,
    SLOTS,
    UTCDateTime,
    api_keys,
    metadata,
    product_month,
    product_total,
    products,
    sales,
    store_month,
    stores,
    versions,
)

__all__ = [
    "CHANNEL",
    "ROLLUP_LIMIT",
    "SLOTS",
    "VERSIONED",
    "BatchJob",
    "Database",
    "Key",
    "Row",
    "UTCDateTime",
    "add_to_rollups",
    "aggregate",
    "api_keys",
    "bump_version",
    "connect",
    "driver_connection",
    "get_version",
    "insert_sales_bulk",
    "is_unavailable",
    "list_products",
    "list_stores",
    "metadata",
    "product_month",
    "product_total",
    "products",
    "sales",
    "save_catalog",
    "schema_revision",
    "sqlstate",
    "store_history",
    "store_month",
    "stores",
    "upsert",
    "versions",
    "write_batch",
    "writer_slot",
]


async def write_batch(database: Database, job: BatchJob, slot: int) -> object:
    """Run one batch's transaction on the database's writer (see ``batch``)."""
    if database.sqlite_writer is not None:
        return await database.sqlite_writer.write_batch(job, slot)
    return await _write_postgres(database, job, slot)
