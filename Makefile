# Two commands for a fresh machine:  `make demo`  and  `make test`.
export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= egl
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST
VENV := .venv
STAMP := $(VENV)/.installed

# Flags, per-test timeout and markers live in pyproject.toml ([tool.pytest.ini_options]).
PYTEST := $(VENV)/bin/python -m pytest -q -p no:cacheprovider

.PHONY: demo test test-unit test-ros install bench clean

demo: $(STAMP)
	$(VENV)/bin/wam-policy demo

# everything (CI: .ci/run)
test: $(STAMP)
	$(PYTEST) tests

# the pure tier: no DDS, no subprocess (~1 min here). Not on xdist workers: two at once on 2 cores
# starve the real-time camera playback tests (frames dropped)
test-unit: $(STAMP)
	$(PYTEST) -m unit tests

# real nodes over DDS and node/CLI subprocesses
test-ros: $(STAMP)
	$(PYTEST) -m ros tests

install: $(STAMP)

$(STAMP): requirements.txt requirements-sapien.txt constraints.txt setup.py scripts/install.sh
	bash scripts/install.sh

bench: $(STAMP)
	@for b in bench/*.py; do echo "== $$b"; $(VENV)/bin/python $$b; done

clean:
	rm -rf $(VENV) build install log runs
