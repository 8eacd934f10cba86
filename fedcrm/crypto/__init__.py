"""Homomorphic encryption (TenSEAL CKKS) for aggregation: keys and packing.

No Flower imports here: records are plain dicts (see
:meth:`fedcrm.crypto.packing.EncryptedUpdate.to_records`).
"""

from fedcrm.crypto.ckks import (
    PublicContext,
    SecretContext,
    key_ceremony,
    load_public_context,
    load_secret_context,
)
from fedcrm.crypto.packing import (
    Accumulator,
    EncryptedUpdate,
    aggregate,
    decrypt_average,
    decrypt_sum,
    encrypt_update,
)

__all__ = [
    "Accumulator",
    "EncryptedUpdate",
    "PublicContext",
    "SecretContext",
    "aggregate",
    "decrypt_average",
    "decrypt_sum",
    "encrypt_update",
    "key_ceremony",
    "load_public_context",
    "load_secret_context",
]
