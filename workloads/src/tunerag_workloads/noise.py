"""Expected library noise, kept out of the workloads' output (standard library only).

bitsandbytes 0.50 on a CPU with AVX-512 BF16 tries, when it is imported, to fetch an optional fused
4-bit kernel through the `kernels` package, which downloads it from a hub at run time; without the
package it logs a warning (`Failed to load CPU gemm_4bit_forward from kernels-community: No module
named 'kernels'. ...`) and uses its own kernel. Pods have no hub to download from, so that is the
expected state, and peft imports bitsandbytes in every process that trains, indexes (through
sentence-transformers) or serves: the line reached every log and the quick start's terminal.

Only that record is dropped: the same warning with another cause (the package installed but failing)
and anything else bitsandbytes logs still go out.
"""

from __future__ import annotations

import logging

# The logger bitsandbytes' CPU backend logs through (bitsandbytes/backends/cpu/ops.py).
BNB_CPU_LOGGER = "bitsandbytes.backends.cpu.ops"
KERNELS_MISSING = ("Failed to load CPU gemm_4bit_forward from kernels-community", "No module named 'kernels'")


class _KernelsNotInstalled(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is not ours to judge
            return True
        return not all(part in message for part in KERNELS_MISSING)


def quiet_expected_noise() -> None:
    """Installs the filter on bitsandbytes' CPU logger (once; before or after its import, since a
    logger's filters apply to the records logged through it)."""
    logger = logging.getLogger(BNB_CPU_LOGGER)
    if not any(isinstance(f, _KernelsNotInstalled) for f in logger.filters):
        logger.addFilter(_KernelsNotInstalled())
