"""Progressive delivery of adapter versions: steps, observation of KServe's status, metric
analysis, the A/B test's statistics and the rollout state machine."""
