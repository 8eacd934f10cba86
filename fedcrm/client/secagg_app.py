"""ClientApp handlers of the key ceremony and the secure-aggregation steps.

``query.he_keys``, ``query.he_accept``, ``train.secagg_endorse`` and
``train.secagg_reveal``: each unpacks a message, calls
:mod:`fedcrm.client.secure_agg` and packs the reply (see
:mod:`fedcrm.server.secure_agg` for the exchange).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Message
from flwr.clientapp import ClientApp

from fedcrm import protocol as P
from fedcrm.client.branch import BranchSettings
from fedcrm.client.messages import branch_record, job_of, reply
from fedcrm.client.secure_agg import (
    BranchCrypto,
    accept_key,
    advertise,
    branch_crypto,
    endorse,
    forget_step,
    key_ceremony,
    open_sum,
    reveal,
)
from fedcrm.crypto.bfv_wire import EncryptedVector
from fedcrm.errors import FedCRMError


def secagg_of(message: Message) -> dict[str, Any]:
    """The ``secagg`` record of a message."""
    if P.SECAGG not in message.content:
        raise FedCRMError("the message carries no secure-aggregation record")
    return dict(message.content[P.SECAGG])


def crypto_of(message: Message, settings: BranchSettings) -> BranchCrypto:
    """The branch's crypto for the job and roster the message names."""
    spec, _ = job_of(message)
    return branch_crypto(settings, bytes(secagg_of(message)["roster"]), spec.min_contributors)


def open_message_sum(
    message: Message, settings: BranchSettings, run_id: str, kind: str
) -> np.ndarray:
    """Open the masked sum a message carries (``encrypted``) and forget the step before it.

    ``kind`` names the codec (``update`` or ``histogram``); the checks of
    :func:`~fedcrm.client.secure_agg.open_sum` apply (its own upload among at
    least ``min-contributors``).
    """
    record = dict(message.content[P.ENCRYPTED])
    step = int(record["step"])
    crypto = crypto_of(message, settings)
    sums, _ = open_sum(
        crypto,
        run_id,
        step,
        EncryptedVector.from_records(record),
        bytes(record["correction"]),
        kind,
    )
    forget_step(crypto, run_id, step - 1)
    return sums


def upload_step(
    message: Message, settings: BranchSettings
) -> tuple[BranchCrypto, int, list[bytes]]:
    """The branch's crypto, the step to upload to and that step's advertisements."""
    record = secagg_of(message)
    ads = [bytes(a) for a in record.get("advertisements", [])]
    return crypto_of(message, settings), int(record["step"]), ads


def register_secagg_handlers(app: ClientApp, guarded: Callable[..., Any]) -> None:
    """Add the key-ceremony and secure-aggregation handlers to ``app``."""

    def answer(message: Message, settings: BranchSettings, values: dict[str, Any]) -> Message:
        return reply(message, branch_record(settings), **{P.SECAGG: ConfigRecord(values)})

    @app.query("he_keys")
    @guarded
    def he_keys(message: Message, context: Context, settings: BranchSettings) -> Message:
        spec, _ = job_of(message)
        record = secagg_of(message)
        crypto = crypto_of(message, settings)
        values: dict[str, Any] = {}
        if record.get("ask") != "advertise":
            values = key_ceremony(crypto, str(record["holder"]))
        values["advertisement"] = advertise(crypto, spec.run_id, int(record["step"]))
        return answer(message, settings, values)

    @app.query("he_accept")
    @guarded
    def he_accept(message: Message, context: Context, settings: BranchSettings) -> Message:
        record = secagg_of(message)
        crypto = crypto_of(message, settings)
        held = accept_key(crypto, str(record["holder"]), bytes(record["sealed"]))
        return answer(message, settings, {"context_id": held})

    @app.train("secagg_endorse")
    @guarded
    def secagg_endorse(message: Message, context: Context, settings: BranchSettings) -> Message:
        spec, _ = job_of(message)
        record = secagg_of(message)
        crypto = crypto_of(message, settings)
        signed = endorse(
            crypto,
            spec.run_id,
            int(record["step"]),
            [str(x) for x in record["live"]],
            [str(x) for x in record["dropped"]],
        )
        return answer(message, settings, {"endorsement": signed})

    @app.train("secagg_reveal")
    @guarded
    def secagg_reveal(message: Message, context: Context, settings: BranchSettings) -> Message:
        spec, _ = job_of(message)
        record = secagg_of(message)
        crypto = crypto_of(message, settings)
        values: dict[str, Any] = {
            "reveal": reveal(crypto, spec.run_id, int(record["step"]), bytes(record["request"]))
        }
        if "next_step" in record:
            values["advertisement"] = advertise(crypto, spec.run_id, int(record["next_step"]))
        return answer(message, settings, values)
