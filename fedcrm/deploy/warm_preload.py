"""What the warm SuperExec imports once, so that each forked task starts warm.

A fedcrm ClientApp needs flwr, torch, opacus, tenseal and pandas, about ten
seconds of imports on two busy cores. The warm SuperExec imports them once
(:data:`PRELOAD`, the ClientApp's modules including its lazy imports) and then
forgets fedcrm's own modules again (:func:`preload`), so every forked child
shares the libraries but imports the app itself from the FAB the server
shipped.
"""

from __future__ import annotations

import importlib
import sys
import time
from collections.abc import Sequence

# What a fedcrm ClientApp imports, including its lazy imports (torch, opacus, tenseal:
# about 10 s of imports on two busy cores); loaded once here so forked children start
# warm. fedcrm itself is dropped again after the import (see ``preload``).
PRELOAD = (
    "fedcrm.client.app",
    "fedcrm.client.lstm_round",
    "fedcrm.client.gbdt_app",
    "fedcrm.crypto.bfv",
    "fedcrm.crypto.masking",
    "fedcrm.privacy.ledger",
    "fedcrm.models.dp_opacus",
    "fedcrm.models.dp_lstm_fast",
    # torch.optim imports torch._dynamo when the first optimizer is built: 0.6-0.9 s of
    # every training message otherwise.
    "torch._dynamo",
)


def preload(modules: Sequence[str] = PRELOAD, keep_prefix: str = "fedcrm") -> list[str]:
    """Import ``modules`` and their dependencies, then forget ``keep_prefix``'s own modules.

    The third-party libraries stay in ``sys.modules`` (so a forked child does not
    import them again); the app's own package is removed, so each child imports it
    from the FAB directory Flower puts first on ``sys.path``. Returns the module
    names that stay loaded.
    """
    try:
        for name in modules:
            importlib.import_module(name)
    finally:  # even after a failed import: children must import the FAB's own code
        for name in list(sys.modules):
            if name == keep_prefix or name.startswith(keep_prefix + "."):
                del sys.modules[name]
    return sorted(sys.modules)


def _preload_and_announce(
    preload_modules: Sequence[str], runtime_api_address: str, approved_fabs: Sequence[str] | None
) -> None:
    """Import the dependencies children share, then say what this SuperExec serves."""
    t0 = time.perf_counter()
    try:
        kept = preload(preload_modules) if preload_modules else sorted(sys.modules)
    except Exception as err:  # noqa: BLE001 - a cold child still works, only slower
        print(
            f"fedcrm warm SuperExec: preloading failed ({type(err).__name__}: {err}); "
            "each message imports what it needs",
            file=sys.stderr,
            flush=True,
        )
        kept = sorted(sys.modules)
    if approved_fabs is None:
        apps = "any app the SuperLink sends"
    else:
        apps = "only the approved apps " + ", ".join(h[:12] for h in approved_fabs)
    print(
        f"fedcrm warm SuperExec: {len(kept)} modules preloaded in "
        f"{time.perf_counter() - t0:.1f} s; serving {runtime_api_address}; runs {apps}",
        file=sys.stderr,
        flush=True,
    )
