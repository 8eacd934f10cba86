"""Headless matplotlib, set up once for the modules that draw PNGs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

DPI = 110


def save(fig: Any, out_path: Path) -> Path:
    """Lay out, write ``out_path`` (its folder created) and close ``fig``."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out_path, dpi=DPI)
    plt.close(fig)
    return out_path


__all__ = ["plt", "save"]
