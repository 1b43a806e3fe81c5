# tierfs: `make demo` and `make test` work on a fresh Debian machine as root.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
APT_PACKAGES := fuse3 libfuse3-dev pkg-config gcc python3-dev python3-venv stress-ng
BENCH_PACKAGES := fio bindfs mergerfs s3fs

.PHONY: setup system-deps demo test test-fast bench sanitize man clean

system-deps:
	@if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  missing=""; for p in $(APT_PACKAGES) $(EXTRA_APT); do \
	    dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; fi; \
	fi

$(PY):
	$(PYTHON) -m venv $(VENV)

setup: system-deps $(PY)
	$(PY) -m pip install -q --upgrade pip setuptools wheel cffi
	$(PY) -m pip install -q -e '.[test]'

demo: setup
	$(PY) examples/demo.py

test: setup
	$(PY) -m pytest -q -ra

bench:
	$(MAKE) setup EXTRA_APT="$(BENCH_PACKAGES)"
	$(PY) benchmarks/run.py

man: setup
	$(PY) -m fusefs.manpages man/

clean:
	rm -rf build dist *.egg-info fusefs/_pagecache*.so
