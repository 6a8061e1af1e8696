"""`kubectl tunerag`: a kubectl plugin for the four tunerag kinds (installed as the console script
`kubectl-tunerag`, which kubectl finds on PATH).

    kubectl tunerag status [-n NS | -A] [-o wide|json|yaml]   one table across the four kinds
    kubectl tunerag describe rollout NAME [--plot FILE]        a RolloutPolicy's steps, analysis, history
                                                               (--plot: weight and metrics over time, as HTML)
    kubectl tunerag promote|abort|pause|resume POLICY          act on a RolloutPolicy's rollout
    kubectl tunerag logs ftj|vidx NAME [-f] [--tail N]         the current Job's pod log
                                                               (sharded vidx: each shard's and finalize's, prefixed)

Every command takes kubectl's `-n/--namespace`, `--context` and `--kubeconfig`, and defaults to
the current context of the kubeconfig (and its namespace).
"""
