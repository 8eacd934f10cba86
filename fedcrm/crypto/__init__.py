"""Encryption for aggregation. No Flower imports; records are plain dicts.

Exact secure aggregation (BFV + double masking), see :mod:`fedcrm.crypto.masking`
for the protocol:

* :mod:`~fedcrm.crypto.bfv` - branch side: secret context, encrypt, decrypt;
* :mod:`~fedcrm.crypto.bfv_wire`, :mod:`~fedcrm.crypto.bfv_aggregate` - server
  side: public parameters, the seeded format, sums, the contributor check
  (no TenSEAL import);
* :mod:`~fedcrm.crypto.fixed_point` - reals to integers mod t and back;
* :mod:`~fedcrm.crypto.roster`, :mod:`~fedcrm.crypto.masking`,
  :mod:`~fedcrm.crypto.round_state`, :mod:`~fedcrm.crypto.unmasking`,
  :mod:`~fedcrm.crypto.secagg_wire` - the masking protocol;
* :mod:`~fedcrm.crypto.sealing` - a payload from one branch to another through
  the server; :mod:`~fedcrm.crypto.shamir`, :mod:`~fedcrm.crypto.primitives`.

Approximate CKKS aggregation (:mod:`~fedcrm.crypto.ckks`,
:mod:`~fedcrm.crypto.packing`, :mod:`~fedcrm.crypto.wire`); its names are
re-exported here. Submodules load on first use, so a server process that only
sums BFV ciphertexts never imports TenSEAL.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "PublicContext": "ckks",
    "SecretContext": "ckks",
    "key_ceremony": "ckks",
    "load_public_context": "ckks",
    "load_secret_context": "ckks",
    "Accumulator": "packing",
    "EncryptedUpdate": "packing",
    "aggregate": "packing",
    "decrypt_average": "packing",
    "decrypt_sum": "packing",
    "encrypt_update": "packing",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    try:  # a submodule reached as an attribute, e.g. fedcrm.crypto.bfv
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{name}":
            raise  # the submodule exists but one of its dependencies is missing
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
