"""Expected library noise kept out of the workloads' output (tunerag_workloads.noise). The real
notice, from a real import of bitsandbytes, is checked absent from a training pod's log and a
model server's output in tests/e2e/test_finetune_pipeline.py."""

from __future__ import annotations

import logging

import pytest

from tunerag_workloads.noise import BNB_CPU_LOGGER, quiet_expected_noise


def test_only_the_notice_that_kernels_is_not_installed_is_dropped(caplog: pytest.LogCaptureFixture) -> None:
    """bitsandbytes logs it (bitsandbytes/backends/cpu/ops.py) when imported on a CPU with AVX-512
    BF16 and no `kernels` package: expected in pods, which have no hub to download kernels from. The
    same warning with another cause, and anything else it logs, still go out."""
    import tunerag_workloads  # noqa: F401  (installs the filter, as every workload's entry point does)

    quiet_expected_noise()  # idempotent
    logger = logging.getLogger(BNB_CPU_LOGGER)
    assert len(logger.filters) == 1
    notice = ("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure you already "
              "`pip install kernels` and the kernels >= 0.11.1")
    with caplog.at_level(logging.WARNING, logger=BNB_CPU_LOGGER):
        logger.warning(notice, ModuleNotFoundError("No module named 'kernels'"))
        logger.warning(notice, RuntimeError("the hub answered 503"))
        logger.error("gemv_4bit failed")
    assert [r.getMessage()[:60] for r in caplog.records] == [
        (notice % "the hub answered 503")[:60], "gemv_4bit failed"]
