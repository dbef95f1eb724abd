"""Health and readiness (no authentication): /health, /ready, /live."""

from __future__ import annotations

import socket
import time
from typing import Any

from handlers.base import APIHandler
from services.clock import now_iso

CONTAINER_ID = socket.gethostname()


class HealthHandler(APIHandler):
    """200 when the process and its database are fine; 503 with the same shape otherwise."""

    async def prepare(self) -> None:
        # Health never depends on the auth cookie, so a database outage cannot turn it into a 500.
        self.current_user = None

    async def get(self) -> None:
        config = self.ctx.config
        database = await self.ctx.db_probe.state()
        healthy = database == "ok" and not self.ctx.draining
        status = "ok" if healthy else ("draining" if self.ctx.draining else "degraded")
        data: dict[str, Any] = {
            "status": status,
            "service": "internal-api-server",
            "containerId": CONTAINER_ID,
            "build": {
                "commitSha": config.build_commit_sha,
                "timestamp": config.build_timestamp,
                "imageTag": config.build_image_tag,
            },
            "database": database,
            "uptimeSeconds": round(time.monotonic() - self.ctx.started_at, 1),
            "timestamp": now_iso(),
        }
        self.set_header("X-Container-ID", CONTAINER_ID)
        self.write_json(
            {"success": healthy, "status": status, "containerId": CONTAINER_ID, "data": data}, 200 if healthy else 503
        )


class ReadyHandler(APIHandler):
    async def prepare(self) -> None:
        self.current_user = None

    async def get(self) -> None:
        if self.ctx.draining or await self.ctx.db_probe.state() != "ok":
            self.write_json({"status": "not_ready"}, 503)
        else:
            self.write_json({"status": "ready"})


class LiveHandler(APIHandler):
    async def prepare(self) -> None:
        self.current_user = None

    def get(self) -> None:
        self.write_json({"status": "alive"})


ROUTES = [
    (r"/health", HealthHandler),
    (r"/ready", ReadyHandler),
    (r"/live", LiveHandler),
]
