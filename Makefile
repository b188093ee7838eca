# Conveniences; ./dev is the entry point the README documents.
.PHONY: demo test setup bench clean
demo:  ; ./dev demo
test:  ; ./dev test
setup: ; ./dev setup
bench: ; ./dev bench
clean: ; rm -rf .venv build .pytest_cache .hypothesis
