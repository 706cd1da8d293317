"""Data access for the demo: SQLAlchemy models and queries, the upstream, the upload store.

Every method that does I/O takes the request's ``CancellationToken`` as its last parameter and
binds it to the work (``cancellable(session, token)`` for SQL), so a statement stops on the
database server the moment the client that asked for it leaves. A database that cannot serve is
``DatabaseUnavailable``, whichever driver said so and however (``errors.py``).
"""

from __future__ import annotations

from .database import Database as Database
from .database import PoolStatus as PoolStatus
from .errors import DatabaseUnavailable as DatabaseUnavailable
from .orders import OrderLine as OrderLine
from .products import ProductHit as ProductHit
from .recommendations import RecommendationsClient as RecommendationsClient
from .recommendations import RecommendationsUnavailable as RecommendationsUnavailable
from .sales import EXPORT_COLUMNS as EXPORT_COLUMNS
from .sales import DailySales as DailySales
from .sales import ExportRow as ExportRow
from .summaries import SummaryRepository as SummaryRepository
from .unit_of_work import UnitOfWork as UnitOfWork
from .uploads import StoredUpload as StoredUpload
from .uploads import UploadStore as UploadStore
from .uploads import UploadTooLarge as UploadTooLarge

__all__ = [
    "EXPORT_COLUMNS",
    "DailySales",
    "Database",
    "DatabaseUnavailable",
    "ExportRow",
    "OrderLine",
    "PoolStatus",
    "ProductHit",
    "RecommendationsClient",
    "RecommendationsUnavailable",
    "StoredUpload",
    "SummaryRepository",
    "UnitOfWork",
    "UploadStore",
    "UploadTooLarge",
]
