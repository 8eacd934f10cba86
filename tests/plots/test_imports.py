"""The plots package loads matplotlib only where a PNG is drawn."""

from __future__ import annotations

import subprocess
import sys


def _loads_matplotlib(*modules: str) -> bool:
    code = f"import sys\nimport {', '.join(modules)}\nprint('matplotlib' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    return out.strip() == "True"


def test_the_clientapp_and_the_privacy_report_never_import_matplotlib() -> None:
    assert not _loads_matplotlib("fedcrm.client.app", "fedcrm.privacy.report", "fedcrm.plots")
    # The check can see it: the modules that draw PNGs do load it.
    assert _loads_matplotlib("fedcrm.plots.rounds")
