"""Peak-memory helpers shared by the benchmark scripts (Linux /proc, with a getrusage fallback)."""

from __future__ import annotations

import resource


def status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise KeyError(field)


def reset_peak() -> float:
    """Reset the peak-RSS counter to the current RSS (Linux) and return the current RSS in MB.

    getrusage's ru_maxrss survives fork+exec (a child starts at its parent's peak), so use the
    per-process VmHWM instead, which ``clear_refs`` can reset after the imports.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    return status_mb("VmRSS")


def peak_mb() -> float:
    try:
        return status_mb("VmHWM")
    except (OSError, KeyError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
