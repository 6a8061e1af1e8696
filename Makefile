.PHONY: quickstart test crds lint mutation

quickstart: ## set everything up on a fresh machine and run the example pipeline
	bash .ci/quickstart $(ARGS)

test: ## set up what is missing, then run the whole test suite
	bash .ci/test

crds: ## regenerate CRDs from the pydantic models
	eval "$$(bash .ci/setup)" && python -m tunerag_operator.api.crdgen

lint:
	eval "$$(bash .ci/setup)" && ruff check operator tests workloads && mypy

mutation: ## mutation check of the decision modules (slow; not in CI): make mutation [MODULE=rollout-steps] (see --list)
	bash .ci/mutation $(foreach m,$(MODULE),--module $(m)) $(ARGS)
