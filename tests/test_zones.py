"""Time zones come from the pinned tzdata; a store whose zone cannot be used fails alone."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from salesreport import config
from salesreport.api import create_app
from salesreport.zones import zone
from tests.conftest import PRODUCTS, STORES, Clock, app_client, count_sales, seed
from tests.test_api import assert_problem
from tests.test_cli import cli
from tests.test_health import execute, noticed

pytestmark = pytest.mark.anyio

JSON = {"content-type": "application/json"}


def test_zones_come_from_tzdata_not_the_operating_system() -> None:
    import zoneinfo

    assert zoneinfo.TZPATH == ()
    assert zone("Europe/Kyiv").key == "Europe/Kyiv"
    with pytest.raises(ValueError, match="not a time zone"):
        zone("Mars/Olympus_Mons")
    with pytest.raises(ValueError, match="not a time zone"):
        zone("../../etc/passwd")


async def test_a_store_with_an_unusable_zone_fails_alone(settings: config.Settings, clock: Clock) -> None:
    async with app_client(settings, clock) as client:
        # Written straight into the table (the importer refuses it), or newer than this server's tzdata.
        await execute(settings, "UPDATE stores SET timezone = 'Mars/Olympus_Mons' WHERE id = 2")
        await execute(settings, "UPDATE versions SET version = version + 1 WHERE name = 'catalog'")
        await noticed(client)
        response = await client.post("/sales", content=json.dumps({"product_id": 1, "store_id": 2}), headers=JSON)
        problem = assert_problem(response, 503)
        assert "store 2" in problem["detail"] and response.headers["retry-after"]
        other = await client.post("/sales", content=json.dumps({"product_id": 1, "store_id": 1}), headers=JSON)
        assert other.status_code == 201
        assert (await client.get("/products")).status_code == 200
        stores = await client.get("/stores")
        assert stores.status_code == 200 and len(stores.json()) == 4
        ready = await client.get("/health/ready")
        assert ready.status_code == 200
        assert any("store 2" in warning for warning in ready.json()["warnings"])
    assert await count_sales(settings) == 1


async def test_a_store_with_an_unusable_zone_does_not_stop_start_up(settings: config.Settings, clock: Clock) -> None:
    await seed(settings, PRODUCTS, STORES)
    await execute(settings, "UPDATE stores SET timezone = 'Not/A_Zone' WHERE id = 3")
    app = create_app(settings, clock=clock)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as client,
    ):
        assert (await client.get("/health/ready")).status_code == 200
        ok = await client.post("/sales", content=json.dumps({"product_id": 1, "store_id": 1}), headers=JSON)
        assert ok.status_code == 201
        refused = await client.post("/sales", content=json.dumps({"product_id": 1, "store_id": 3}), headers=JSON)
        assert refused.status_code == 503


def test_import_refuses_a_zone_this_service_cannot_load(database_url: str, tmp_path: Path) -> None:
    stores = tmp_path / "stores.csv"
    stores.write_text("id,address,timezone\n1,Somewhere,Europe/Berlin\n2,Nowhere,Atlantis/Capital\n")
    done = cli(database_url, "import", "--stores", str(stores))
    assert done.returncode == 1
    assert "stores.csv:3: timezone" in done.stderr and "nothing was imported" in done.stderr
