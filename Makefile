# tierfs: `make demo` and `make test` work on a fresh Debian machine as root.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
APT_PACKAGES := fuse3 libfuse3-dev pkg-config gcc python3-dev python3-venv stress-ng
BENCH_PACKAGES := fio bindfs mergerfs s3fs

.PHONY: setup system-deps demo test test-fast bench sanitize man install clean

system-deps:
	@if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  missing=""; for p in $(APT_PACKAGES) $(EXTRA_APT); do \
	    dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then \
	    apt-get -o DPkg::Lock::Timeout=600 update -qq && DEBIAN_FRONTEND=noninteractive \
	      apt-get -o DPkg::Lock::Timeout=600 install -y -qq $$missing; fi; \
	fi

$(PY):
	$(PYTHON) -m venv $(VENV)

setup: system-deps $(PY)
	$(PY) -m pip install -q --upgrade pip setuptools wheel cffi
	$(PY) -m pip install -q -e '.[test,examples,report]'

demo: setup
	$(PY) examples/demo.py

test: setup
	$(PY) -m pytest -q -ra --durations=25

bench:
	$(MAKE) setup EXTRA_APT="$(BENCH_PACKAGES)"
	$(PY) benchmarks/run.py

man: setup
	$(PY) -m fusefs.manpages man/

# Put this checkout's tierfs where mount(8), mount.fuse3 and man(1) look (as root):
# `mount -t fuse.tierfs`, fstab lines, systemd .mount units (examples/systemd/) and
# `man tierfs`, `man tierfs.toml`, `man mount.tierfs` then work. mount(8) runs
# /sbin/mount.fuse.tierfs for type fuse.tierfs; without it mount.fuse3 runs `tierfs`
# from PATH (hence the link in $(PREFIX)/bin).
PREFIX ?= /usr/local
install: setup
	ln -sf $(abspath $(VENV))/bin/tierfs $(PREFIX)/bin/tierfs
	ln -sf $(abspath $(VENV))/bin/mount.tierfs /sbin/mount.tierfs
	ln -sf $(abspath $(VENV))/bin/mount.tierfs /sbin/mount.fuse.tierfs
	install -D -m 0644 man/tierfs.1 $(PREFIX)/share/man/man1/tierfs.1
	install -D -m 0644 man/tierfs.toml.5 $(PREFIX)/share/man/man5/tierfs.toml.5
	install -D -m 0644 man/mount.tierfs.8 $(PREFIX)/share/man/man8/mount.tierfs.8
	-mandb -q >/dev/null 2>&1

clean:
	rm -rf build dist *.egg-info fusefs/_pagecache*.so
