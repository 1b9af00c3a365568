# The two commands in the README. Both are idempotent and start from a fresh clone.
.PHONY: run test setup setup-dev bench

run: ## set up, ingest the sample knowledge base if needed, start the chat page
	scripts/setup.sh
	.venv/bin/kb serve

test: ## set up with test tools, run the whole test suite
	scripts/setup.sh --dev
	.venv/bin/pytest

setup:
	scripts/setup.sh

setup-dev:
	scripts/setup.sh --dev
