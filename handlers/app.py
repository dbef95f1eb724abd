"""The Tornado application: every route table in one list."""

from __future__ import annotations

import tornado.web

from handlers import admin, auth, execute, github, health, metrics, openapi, runs, sessions, stream_routes, user
from handlers.base import NotFoundHandler, log_request
from services.context import AppContext

# Each path belongs to one handler class (one module), so the order here changes no answer.
ROUTE_MODULES = [health, metrics, openapi, auth, user, stream_routes, execute, runs, sessions, admin, github]


def make_app(ctx: AppContext) -> tornado.web.Application:
    routes = [route for module in ROUTE_MODULES for route in module.ROUTES]
    return tornado.web.Application(
        routes,
        ctx=ctx,
        default_handler_class=NotFoundHandler,
        log_function=log_request,
        # gzip would buffer Server-Sent Events; responses here are small JSON anyway.
        compress_response=False,
    )
