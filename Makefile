# Thin wrappers around ./quickstart, for those who reach for make.
.PHONY: demo test setup
demo:
	./quickstart demo
test:
	./quickstart test
setup:
	./quickstart setup
