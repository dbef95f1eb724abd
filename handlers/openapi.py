"""GET /api/openapi.json: the hand-written openapi.yaml, served as JSON.

The YAML is read and converted once, when this module is imported at start-up (a broken spec
stops the server from starting rather than failing requests); every request gets the same bytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import yaml

from handlers.base import APIHandler

SPEC_PATH = Path(__file__).resolve().parent.parent / "openapi.yaml"


def load_spec(path: Path = SPEC_PATH) -> dict[str, Any]:
    """The OpenAPI document as a dict (YAML anchors and merge keys resolved)."""
    with path.open(encoding="utf-8") as handle:
        spec = yaml.load(handle, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506 - a safe loader
    if not isinstance(spec, dict) or "openapi" not in spec:
        raise ValueError(f"{path} is not an OpenAPI document")
    return spec


SPEC_JSON = orjson.dumps(load_spec())


class OpenAPIHandler(APIHandler):
    async def prepare(self) -> None:
        # A static document: it never depends on the cookie or the database.
        self.current_user = None

    def get(self) -> None:
        self.finish(SPEC_JSON)


ROUTES = [(r"/api/openapi\.json", OpenAPIHandler)]
