"""tunerag workloads: the containers the operator starts (finetune, index, serve).

Importing the package (every workload's entry point does, before torch) keeps one piece of expected
library noise out of the workloads' output: see `noise`.
"""

from tunerag_workloads.noise import quiet_expected_noise

__version__ = "0.1.0"

quiet_expected_noise()
