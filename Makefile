.PHONY: quickstart test crds lint

quickstart: ## set everything up on a fresh machine and run the example pipeline
	bash .ci/quickstart $(ARGS)

test: ## set up what is missing, then run the whole test suite
	bash .ci/test

crds: ## regenerate CRDs from the pydantic models
	eval "$$(bash .ci/setup)" && python -m tunerag_operator.api.crdgen

lint:
	eval "$$(bash .ci/setup)" && ruff check operator tests workloads && mypy
