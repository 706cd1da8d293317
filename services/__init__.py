"""Use cases of the demo: one class each, every public method taking the token last.

Services are where the token is *shaped*: linked with a tighter timeout where one dependency
must not eat the whole budget (``SearchService``), checked between chunks of CPU work
(``ReportsService``), and deliberately set aside at the point of no return (``OrdersService``).
Everything else passes it on unchanged.
"""

from __future__ import annotations

from .data_sync import DataSyncService as DataSyncService
from .errors import Conflict as Conflict
from .errors import DatabaseUnavailable as DatabaseUnavailable
from .errors import InvalidInput as InvalidInput
from .errors import NotFound as NotFound
from .errors import PayloadTooLarge as PayloadTooLarge
from .errors import ServiceError as ServiceError
from .health import Health as Health
from .health import HealthService as HealthService
from .orders import LineRequest as LineRequest
from .orders import OrdersService as OrdersService
from .orders import PlacedOrder as PlacedOrder
from .reports import EXPORT_COLUMNS as EXPORT_COLUMNS
from .reports import REPORTS as REPORTS
from .reports import DailySales as DailySales
from .reports import Period as Period
from .reports import ReportsService as ReportsService
from .reports import SalesReport as SalesReport
from .search import ProductHit as ProductHit
from .search import SearchResult as SearchResult
from .search import SearchService as SearchService
from .statistics import CategorySummary as CategorySummary
from .uploads import UploadsService as UploadsService

__all__ = [
    "EXPORT_COLUMNS",
    "REPORTS",
    "CategorySummary",
    "Conflict",
    "DailySales",
    "DataSyncService",
    "DatabaseUnavailable",
    "Health",
    "HealthService",
    "InvalidInput",
    "LineRequest",
    "NotFound",
    "OrdersService",
    "PayloadTooLarge",
    "Period",
    "PlacedOrder",
    "ProductHit",
    "ReportsService",
    "SalesReport",
    "SearchResult",
    "SearchService",
    "ServiceError",
    "UploadsService",
]
