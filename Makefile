# Two commands for a fresh machine:  `make demo`  and  `make test`.
export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= egl
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test install bench clean

demo: $(STAMP)
	$(VENV)/bin/wam-policy demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider --timeout 1800 --reruns 2 --reruns-delay 5 tests

install: $(STAMP)

$(STAMP): requirements.txt requirements-sapien.txt constraints.txt setup.py scripts/install.sh
	bash scripts/install.sh

bench: $(STAMP)
	@for b in bench/*.py; do echo "== $$b"; $(VENV)/bin/python $$b; done

clean:
	rm -rf $(VENV) build install log runs
