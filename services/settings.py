"""The declaration of one setting: a `Config` field with its documentation (services/config.py
declares them; services/config_docs.py writes the README's table and `.env.example` from them)."""

from __future__ import annotations

from dataclasses import field
from typing import Any


def setting(
    default: Any,
    help: str,
    *,
    section: str | None = None,
    minimum: float | None = None,
    url: bool = False,
    secret: bool = False,
    fill_in: bool = False,
    also: tuple[str, ...] = (),
    default_text: str | None = None,
) -> Any:
    """A Config field with its documentation, the one place a setting is described.

    `help` is the text of the README's configuration table and of `.env.example` (both generated
    from it: `server.py config docs`). `section` starts a group of settings (the fields after it
    belong to it until the next). `minimum`: the smallest value a number may hold (else 0); `url`:
    it must be an http(s) URL; `secret`: never in a repr, marked `[secret]` in `.env.example`;
    `fill_in`: shown there uncommented, as a value to set; `also`: other variables read for it;
    `default_text`: the README's words for a default that is not a plain value.
    """
    metadata: dict[str, Any] = {"help": help, "secret": secret, "fill_in": fill_in, "also": also}
    if section is not None:
        metadata["section"] = section
    if minimum is not None:
        metadata["minimum"] = minimum
    if url:
        metadata["url"] = True
    if default_text is not None:
        metadata["default_text"] = default_text
    return field(default=default, repr=not secret, metadata=metadata)
