"""GET /metrics in the Prometheus text format (keep it internal: see README "Docker")."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST

from handlers.base import APIHandler
from services import metrics


class MetricsHandler(APIHandler):
    async def prepare(self) -> None:
        # Scrapes never depend on a cookie or the database.
        self.current_user = None

    def get(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(metrics.render(self.ctx.gauges))


ROUTES = [(r"/metrics", MetricsHandler)]
