"""Fill the database with a deterministic shop: ``python -m app.seed --rows N``.

Same ``--rows``, same data, on SQLite and PostgreSQL alike: 2,000 products in 20 categories,
customers in proportion to the sales, and ``N`` sales over two years (2024-2025) in which a few
customers buy often and most buy rarely, so "new versus returning" means something. Rows are
generated in batches and bulk-loaded (COPY on PostgreSQL), with a progress bar on stderr.

The demo seeds an empty database by itself on first start (``SEED_ROWS``, by default sized for
the dialect: a few seconds of loading on SQLite, a report that takes seconds on PostgreSQL).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import random
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TextIO

from sqlalchemy import Table

from repositories import Database
from repositories.bulk import BulkLoader, Part, Row
from repositories.models import Base
from request_aborted import CancellationToken

from .settings import Settings

__all__ = ["default_rows", "main", "seed"]

logger = logging.getLogger("app.seed")

TABLES: Mapping[str, Table] = Base.metadata.tables
PRODUCTS = 2000
FIRST_DAY = dt.date(2024, 1, 1)
DAYS = 731  # 2024-01-01 .. 2025-12-31
BATCH = 50_000
REGIONS = ("north", "south", "east", "west", "central")
CATEGORIES = {
    "Kitchen": ("Mug", "Kettle", "Pan", "Knife", "Teapot"),
    "Garden": ("Hose", "Rake", "Planter", "Shears", "Lantern"),
    "Office": ("Desk", "Lamp", "Chair", "Notebook", "Stapler"),
    "Outdoor": ("Tent", "Backpack", "Stove", "Hammock", "Cooler"),
    "Audio": ("Speaker", "Headphones", "Radio", "Turntable", "Amplifier"),
    "Bath": ("Towel", "Mirror", "Shelf", "Mat", "Dispenser"),
    "Toys": ("Puzzle", "Kite", "Robot", "Train", "Blocks"),
    "Sports": ("Ball", "Racket", "Helmet", "Bottle", "Gloves"),
    "Bedroom": ("Pillow", "Blanket", "Clock", "Wardrobe", "Duvet"),
    "Tools": ("Hammer", "Drill", "Saw", "Wrench", "Ladder"),
    "Pets": ("Leash", "Bowl", "Bed", "Brush", "Collar"),
    "Lighting": ("Bulb", "Pendant", "Strip", "Sconce", "Torch"),
    "Travel": ("Suitcase", "Pillow", "Adapter", "Wallet", "Organizer"),
    "Baby": ("Stroller", "Bib", "Monitor", "Rattle", "Crib"),
    "Cycling": ("Bell", "Pump", "Saddle", "Lock", "Light"),
    "Crafts": ("Easel", "Brush Set", "Canvas", "Yarn", "Scissors"),
    "Music": ("Guitar", "Ukulele", "Metronome", "Stand", "Keyboard"),
    "Storage": ("Box", "Basket", "Crate", "Rack", "Bin"),
    "Cleaning": ("Mop", "Broom", "Sponge", "Vacuum", "Bucket"),
    "Decor": ("Vase", "Frame", "Candle", "Rug", "Cushion"),
}
ADJECTIVES = (
    "Classic",
    "Compact",
    "Deluxe",
    "Eco",
    "Folding",
    "Heavy-Duty",
    "Mini",
    "Modern",
    "Portable",
    "Rustic",
    "Smart",
    "Vintage",
    "Wireless",
    "Premium",
    "Travel",
    "Ergonomic",
    "Nordic",
    "Bamboo",
    "Steel",
    "Ceramic",
)
COLOURS = ("Red", "Blue", "Green", "Black", "White", "Grey", "Oak", "Teal", "Amber", "Rose")


def default_rows(dialect: str) -> int:
    """Sales rows for a first start: seconds of loading on SQLite, more where COPY is fast."""
    return 2_000_000 if dialect == "postgresql" else 800_000


async def seed(
    database: Database,
    rows: int,
    token: CancellationToken,
    *,
    progress: TextIO | None = None,
    on_tenth: Callable[[int, int], object] | None = None,
) -> None:
    """Load the shop and ``rows`` sales into empty tables; the token is checked per batch.

    ``progress`` draws a bar on a terminal; ``on_tenth(done, total)`` is called each time another
    tenth of the rows is loaded (the app's first start logs it: seconds of silence look hung).
    """
    rng = random.Random(20240101)
    loader = BulkLoader(database)
    prices = _prices(rng)
    customers = max(1000, rows // 25)
    bar = _Bar(2 * PRODUCTS + customers + rows, progress, on_tenth)  # products, stock, ...
    parts: list[Part] = [
        (TABLES[table], columns, [batch]) for table, columns, batch in _shop(rng, prices, customers)
    ]
    columns = ("sold_on", "product_id", "customer_id", "region", "quantity", "amount_cents")
    parts.append((TABLES["sales"], columns, _sales(rng, prices, customers, rows)))
    await loader.load(parts, bar.advance, token)
    bar.finish()


def _prices(rng: random.Random) -> list[int]:
    return [int(rng.lognormvariate(7.8, 0.9)) + 99 for _ in range(PRODUCTS)]


def _shop(
    rng: random.Random, prices: list[int], customers: int
) -> Iterator[tuple[str, tuple[str, ...], Sequence[Row]]]:
    names = list(CATEGORIES)
    products = []
    for index in range(PRODUCTS):
        category = names[index % len(names)]
        noun = rng.choice(CATEGORIES[category])
        name = f"{rng.choice(COLOURS)} {rng.choice(ADJECTIVES)} {noun}"
        products.append((f"SKU-{index + 1:05d}", name, category, prices[index]))
    yield "products", ("sku", "name", "category", "price_cents"), products
    people = [
        (f"Customer {number}", f"customer{number}@example.com", rng.choice(REGIONS))
        for number in range(1, customers + 1)
    ]
    yield "customers", ("name", "email", "region"), people
    stock = [(product_id, rng.randint(50, 1000)) for product_id in range(1, PRODUCTS + 1)]
    yield "stock", ("product_id", "quantity"), stock


def _sales(
    rng: random.Random, prices: list[int], customers: int, rows: int
) -> Iterator[Sequence[Row]]:
    days = [FIRST_DAY + dt.timedelta(days=offset) for offset in range(DAYS)]
    regions = REGIONS
    for start in range(0, rows, BATCH):
        batch: list[Row] = []
        for _ in range(min(BATCH, rows - start)):
            day = int(DAYS * rng.random())
            product = int(PRODUCTS * rng.random() ** 1.5)  # a long tail of slow sellers
            # A third of the customers are there from the start, the rest sign up over the two
            # years; among those signed up, a few regulars buy most.
            signed_up = customers // 3 + (customers - customers // 3) * (day + 1) // DAYS
            customer = int(signed_up * rng.random() ** 2) + 1
            quantity = 1 + int(3 * rng.random() ** 2)
            batch.append(
                (
                    days[day],
                    product + 1,
                    customer,
                    regions[customer % 5],
                    quantity,
                    quantity * prices[product],
                )
            )
        yield batch


class _Bar:
    """``[#########.........]  45%  225,000/500,000`` on one line, redrawn at most 10x a second."""

    def __init__(
        self,
        total: int,
        stream: TextIO | None,
        on_tenth: Callable[[int, int], object] | None = None,
    ) -> None:
        self.total = total
        self.done = 0
        self.stream = stream
        self.on_tenth = on_tenth
        self.started = time.monotonic()
        self._drawn = 0.0
        self._tenths = 0

    def advance(self, count: int) -> None:
        self.done += count
        if self.on_tenth is not None and self.total:
            tenths = 10 * self.done // self.total
            if tenths > self._tenths:
                self._tenths = tenths
                self.on_tenth(self.done, self.total)
        now = time.monotonic()
        if self.stream is not None and now - self._drawn >= 0.1:
            self._drawn = now
            self._draw()

    def finish(self) -> None:
        if self.stream is not None:
            self._draw()
            self.stream.write(f"  {time.monotonic() - self.started:.1f}s\n")
            self.stream.flush()

    def _draw(self) -> None:
        assert self.stream is not None
        share = self.done / self.total if self.total else 1.0
        filled = int(30 * share)
        self.stream.write(
            f"\r[{'#' * filled}{'.' * (30 - filled)}] {share:4.0%}  {self.done:,}/{self.total:,}"
        )
        self.stream.flush()


async def _run(url: str, rows: int | None, *, reset: bool, if_empty: bool) -> int:
    database = Database(url)
    token = CancellationToken.NONE  # a command-line tool: Ctrl-C is its cancellation
    try:
        loader = BulkLoader(database)
        if reset:
            await loader.recreate_schema(token)
        else:
            await database.create_schema(token)
        if not await database.is_empty(token):
            if if_empty:
                print("already seeded; nothing to do", file=sys.stderr)
                return 0
            print("the database is not empty: pass --reset to start over", file=sys.stderr)
            return 1
        count = rows if rows is not None else default_rows(database.dialect)
        print(f"seeding {count:,} sales rows into {database.dialect}", file=sys.stderr)
        await seed(database, count, token, progress=sys.stderr)
        return 0
    finally:
        await database.dispose()


def main(argv: list[str] | None = None) -> int:
    settings = Settings.from_env()
    parser = argparse.ArgumentParser(prog="python -m app.seed", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--rows",
        type=int,
        default=settings.seed_rows,
        help="sales rows (default: 800,000 on SQLite, 2,000,000 on PostgreSQL)",
    )
    parser.add_argument(
        "--database-url",
        default=settings.database_url,
        help="SQLAlchemy URL (default: $DATABASE_URL or the demo's SQLite file)",
    )
    parser.add_argument("--reset", action="store_true", help="drop and recreate the tables first")
    parser.add_argument(
        "--if-empty",
        action="store_true",
        help="do nothing (successfully) if the database already has data",
    )
    args = parser.parse_args(argv)
    return asyncio.run(_run(args.database_url, args.rows, reset=args.reset, if_empty=args.if_empty))


if __name__ == "__main__":
    sys.exit(main())
