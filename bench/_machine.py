"""Machine facts that every benchmark report states (CPU model, load average)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cpu_model", "load_average"]


def cpu_model(default: str = "unknown") -> str:
    """The CPU's model name from /proc/cpuinfo, or `default` where that is unreadable."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return default


def load_average(sep: str = " ", digits: int = 2) -> str:
    """The 1/5/15-minute load averages joined by `sep`, or "n/a" where the OS has none."""
    if not hasattr(os, "getloadavg"):
        return "n/a"
    return sep.join(f"{x:.{digits}f}" for x in os.getloadavg())
