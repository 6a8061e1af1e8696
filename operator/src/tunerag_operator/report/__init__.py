"""Self-contained HTML reports with inline SVG charts: a FineTuneJob's run report (written by the
finetune workload) and a rollout's analysis plot (`kubectl tunerag describe rollout NAME --plot`).

This package imports the standard library only: the workloads image installs the operator
distribution without its dependencies for it (see the Dockerfile), and a test keeps it so.
"""
