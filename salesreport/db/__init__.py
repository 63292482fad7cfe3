"""The data layer: the schema, the engines, and the SQL that reads and writes them.

``schema`` the tables · ``engines`` connections and which errors mean "away" ·
``pooling`` the server itself or a transaction pooler in front of it ·
``catalog`` products, prices, stores, change counters · ``rollups`` what a sale
and a return add to the reports, and the bulk path · ``batch`` the steps of a
batch's transaction (sales or returns), run by ``postgres`` and ``sqlite``,
each database's writer.
"""

from .batch import BatchJob, Key, ReturnJob, Row
from .catalog import (
    DATA,
    VERSIONED,
    CatalogConflict,
    bump_version,
    data_version,
    get_version,
    list_prices,
    list_products,
    list_stores,
    save_catalog,
    schema_revision,
    set_retired,
)
from .engines import (
    Database,
    connect,
    driver_connection,
    is_partition_race,
    is_unavailable,
    sqlstate,
    upsert,
    writer_slot,
)
from .postgres import write_batch as _write_postgres
from .postgres import write_returns as _write_returns_postgres
from .rollups import Rollups, add_to_rollups, insert_sales_bulk, store_history
from .schema import (
    ARCHIVED,
    BEGINNING,
    ROLLUP_COLUMNS,
    ROLLUP_KEYS,
    ROLLUP_LIMIT,
    SLOTS,
    UTCDateTime,
    api_keys,
    archived_months,
    metadata,
    prices,
    product_month,
    product_total,
    products,
    returns,
    sale_keys,
    sales,
    sessions,
    store_month,
    store_product_month,
    stores,
    versions,
    workers,
)

__all__ = [
    "ARCHIVED",
    "BEGINNING",
    "DATA",
    "ROLLUP_COLUMNS",
    "ROLLUP_KEYS",
    "ROLLUP_LIMIT",
    "SLOTS",
    "VERSIONED",
    "BatchJob",
    "CatalogConflict",
    "Database",
    "Key",
    "ReturnJob",
    "Rollups",
    "Row",
    "UTCDateTime",
    "add_to_rollups",
    "api_keys",
    "archived_months",
    "bump_version",
    "connect",
    "data_version",
    "driver_connection",
    "get_version",
    "insert_sales_bulk",
    "is_partition_race",
    "is_unavailable",
    "list_prices",
    "list_products",
    "list_stores",
    "metadata",
    "prices",
    "product_month",
    "product_total",
    "products",
    "returns",
    "sale_keys",
    "sales",
    "save_catalog",
    "schema_revision",
    "sessions",
    "set_retired",
    "sqlstate",
    "store_history",
    "store_month",
    "store_product_month",
    "stores",
    "upsert",
    "versions",
    "workers",
    "write_batch",
    "write_returns",
    "writer_slot",
]


async def write_batch(database: Database, job: BatchJob, slot: int) -> object:
    """Run one batch's transaction on the database's writer (see ``batch``)."""
    if database.sqlite_writer is not None:
        return await database.sqlite_writer.write_batch(job, slot)
    return await _write_postgres(database, job, slot)


async def write_returns(database: Database, job: ReturnJob, slot: int) -> object:
    """Run one batch of returns on the database's writer (see ``batch.ReturnJob``)."""
    if database.sqlite_writer is not None:
        return await database.sqlite_writer.write_returns(job, slot)
    return await _write_returns_postgres(database, job, slot)
