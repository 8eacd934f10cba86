"""ClientApp handlers of the federated tree protocol (registered by ``make_client_app``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flwr.clientapp import ClientApp


def register_gbdt_handlers(app: ClientApp, guarded: Callable[..., Any]) -> None:
    """Add the ``train.gbdt_*`` / ``evaluate.gbdt`` handlers to ``app``.

    ``guarded`` wraps a ``handler(message, context, settings) -> Message`` so
    every failure becomes a typed reply.
    """
