"""The ``fedcrm`` command: one module per command group.

==============  ============================================================
module          commands
==============  ============================================================
``simulate``    ``fedcrm simulate`` (Hydra overrides, ``-m`` sweeps)
``data``        ``fedcrm data validate|synth|import-cdnow``
``node``        ``fedcrm node init|rotate-keys|restore-ledger|start|app-hash``
``privacy``     ``fedcrm privacy verify|report``
``plot``        ``fedcrm plot privacy-utility``
``federation``  ``fedcrm federation init|cert|connection``
``server``      ``fedcrm server start|register|unregister|revoke-key|nodes``
``score``       ``fedcrm score``, ``fedcrm explain`` (a model at work at a branch)
==============  ============================================================

Exit codes: 0 success, 1 the checked thing is invalid (data, ledger), 2 usage
or configuration error.
"""

from __future__ import annotations

from fedcrm.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
