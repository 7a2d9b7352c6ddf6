# Development and CI entry points for chorus_ros (GNU make). Two commands set up everything on a
# fresh Debian 12 / Python 3.11 machine (cmake, gcc and PyPI needed):
#   make demo    venv + interfaces + editable install, then the demo
#   make test    the same, then the test suite
# Other targets: venv, interfaces, install, bench, colcon-check, clean. `make help` lists them.
#
# Layout: .venv/ holds the pinned requirements (incl. the ROS 2 Kilted PyPI wheels); the
# interfaces (msg/, srv/) are built with CMake into .venv as a ROS prefix (generated Python
# module in site-packages/chorus_ros, C libraries in .venv/lib); the hand-written sources are
# an editable install. Both folders named chorus_ros resolve together: see the `install` target.

SHELL := /bin/bash
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

PYTHON ?= python3
VENV ?= .venv
VENV_ABS := $(abspath $(VENV))
VPY := $(VENV_ABS)/bin/python
BUILD_DIR ?= build
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
PYTEST_ARGS ?=
BENCH_ARGS ?=
DEMO_ARGS ?=

# The ROS wheels' .pth bootstrapper re-executes the venv interpreter once with LD_LIBRARY_PATH
# set and marks that with this variable. Never pass it down: a recipe's python may be another
# venv's (a clean clone's), which must run its own bootstrap.
unexport _ROS_WHEELS_BOOTSTRAP_COMPLETE
# Build against the venv's ROS prefix only, even from a shell with /opt/ros sourced.
ROS_PREFIX_ENV := AMENT_PREFIX_PATH=$(VENV_ABS) CMAKE_PREFIX_PATH=$(VENV_ABS) COLCON_PREFIX_PATH= PYTHONPATH=
# DDS traffic of everything started here stays on loopback; tools/tests pick a free domain id
# (chorus_ros.tools.isolate_ros_env) and this one is only the fallback for other processes.
export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST
# OpenMP's default spin-wait makes torch 5-10x slower on a loaded 2-core machine (measured by
# benchmarks/bench_render.py: 3600 ms vs 86 ms per view); must be set before torch is imported.
export OMP_WAIT_POLICY ?= PASSIVE
export ROS_DOMAIN_ID ?= $(shell echo $$(( $$$$ % 101 + 1 )))

STAMP_REQ := $(VENV)/.chorus-requirements.stamp
STAMP_IFACE := $(VENV)/.chorus-interfaces.stamp
STAMP_INSTALL := $(VENV)/.chorus-install.stamp
INTERFACE_INPUTS := CMakeLists.txt package.xml chorus_ros/__init__.py \
	$(wildcard msg/*.msg srv/*.srv) $(shell find launch config -type f 2>/dev/null)

.PHONY: help venv interfaces install test demo bench train-demo colcon-check clean gpu-pack gpu-check

help:
	@echo "make demo          set up (venv, interfaces, editable install) and run the demo"
	@echo "make test          set up and run the test suite (PYTEST_ARGS=... to pass options)"
	@echo "make bench         set up and run benchmarks/bench_*.py into docs/benchmarks.md"
	@echo "                   (BENCH_ARGS='--quick name ...')"
	@echo "make train-demo    retrain checkpoints/demo (seven chorus-train runs, an average, the height prior and the fusion decoder, ~4 h on 2 cores + ~1 h of photometric fits once)"
	@echo "make colcon-check  colcon build of this package against the venv's ROS prefix"
	@echo "make gpu-pack      .gpu/: the packages a lent GPU machine lacks (docs/benchmarks.md, GPU)"
	@echo "make gpu-check     the prepared GPU check (GPU_OUT=dir, GPU_ARGS='--device cpu --tiny' here)"
	@echo "make venv | interfaces | install | clean"

# --- venv: the pinned requirements (a no-op while requirements.txt is unchanged)
$(VPY):
	$(PYTHON) -m venv $(VENV)
	touch $(VENV)/COLCON_IGNORE

$(STAMP_REQ): requirements.txt | $(VPY)
	$(VPY) -m pip install -r requirements.txt
	touch $@

venv: $(STAMP_REQ)

# --- interfaces: msg/ + srv/ built with CMake and installed into the venv's ROS prefix.
# The venv *is* the wheels' ament prefix, so nothing needs sourcing afterwards. With
# CHORUS_EDITABLE_SOURCES=ON the Python sources (and the distribution metadata) are left to the
# editable install below.
$(STAMP_IFACE): $(STAMP_REQ) $(INTERFACE_INPUTS)
	$(ROS_PREFIX_ENV) cmake -S . -B $(BUILD_DIR)/interfaces \
		-DCMAKE_INSTALL_PREFIX=$(VENV_ABS) -DPython3_EXECUTABLE=$(VPY) \
		-DBUILD_TESTING=OFF -DCHORUS_EDITABLE_SOURCES=ON
	$(ROS_PREFIX_ENV) cmake --build $(BUILD_DIR)/interfaces -j $(JOBS)
	$(ROS_PREFIX_ENV) cmake --install $(BUILD_DIR)/interfaces >$(BUILD_DIR)/interfaces/install.log \
		|| { cat $(BUILD_DIR)/interfaces/install.log; exit 1; }
	touch $@

interfaces: $(STAMP_IFACE)

# --- install: interfaces + editable install of the sources. One package, two folders:
# - outside the source tree, `import chorus_ros` finds the venv's folder (our __init__.py,
#   installed over rosidl's empty one) and setuptools' editable finder serves chorus_ros.core,
#   .ros, .tools from the sources;
# - with the sources first on sys.path (repo root as cwd, pytest's `pythonpath = .`), the
#   sources' __init__.py runs and pkgutil.extend_path joins the venv's msg/ and srv/.
# The check below covers the first case; test/test_package_imports.py covers both.
$(STAMP_INSTALL): $(STAMP_IFACE) setup.py setup.cfg
	@# --no-build-isolation needs setuptools >= 70.1 (bdist_wheel without the wheel package);
	@# python3.11 -m venv seeds 65.5. 79.0.1 is the version of the known-good dev venv.
	$(VPY) -c "import setuptools.command.bdist_wheel" 2>/dev/null || $(VPY) -m pip install setuptools==79.0.1
	$(VPY) -m pip install --no-deps --no-build-isolation -e .
	cd / && $(VPY) -c "import chorus_ros.core, chorus_ros.tools; \
		from chorus_ros.msg import GaussianMapUpdate; from chorus_ros.srv import QueryObjects; \
		src = chorus_ros.core.__path__[0]; assert src.startswith('$(CURDIR)/'), src; \
		print('chorus_ros', chorus_ros.__version__, 'installed; sources at', src)"
	touch $@

install: $(STAMP_INSTALL)

# --- run
test: install
	$(VPY) -m pytest -q test $(PYTEST_ARGS)

demo: install
	$(VPY) -m chorus_ros.tools.demo $(DEMO_ARGS)

bench: install
	$(VPY) -m chorus_ros.tools.bench $(BENCH_ARGS)

# The shipped checkpoints/demo: six stages, seven runs, an average, the height prior and the fusion decoder (docs/training.md); ~4 h on
# 2 CPU cores, plus ~1 h of photometric fits the first time.
train-demo: install
	$(VENV)/bin/chorus-train --config config/train/robust.yaml $(TRAIN_ARGS)
	$(VENV)/bin/chorus-train --config config/train/demo.yaml init_from=.cache/train/demo_stage1 $(TRAIN_ARGS)
	$(VENV)/bin/chorus-train --config config/train/demo_photometric.yaml init_from=.cache/train/demo_stage2 $(TRAIN_ARGS)
	$(VENV)/bin/chorus-train --config config/train/demo_photometric.yaml init_from=.cache/train/demo_stage3 \
		checkpoint.dir=.cache/train/demo_stage4 log.dir=.cache/runs/demo_stage4 $(TRAIN_ARGS)
	$(VENV)/bin/chorus-train --config config/train/demo_dense.yaml init_from=.cache/train/demo_stage4 $(TRAIN_ARGS)
	$(VENV)/bin/chorus-train --config config/train/demo_boundary.yaml init_from=.cache/train/demo_stage5 $(TRAIN_ARGS)
	$(VENV)/bin/chorus-train --config config/train/demo_boundary.yaml init_from=.cache/train/demo_stage5 seed=3 \
		checkpoint.dir=.cache/train/demo_stage6b log.dir=.cache/runs/demo_stage6b $(TRAIN_ARGS)
	$(VENV)/bin/chorus-average --out checkpoints/demo .cache/train/demo_stage6a .cache/train/demo_stage6b
	$(VENV)/bin/chorus-height-prior --checkpoint checkpoints/demo --seeds 0-47
	$(VENV)/bin/chorus-train --config config/train/demo_fusion.yaml $(TRAIN_ARGS)
	rm -rf checkpoints/demo/fusion && cp -r .cache/train/demo_fusion/fusion checkpoints/demo/fusion

# --- colcon: the robot's build (`colcon build` of CMakeLists.txt) against the venv's ROS
# prefix, in $(BUILD_DIR)/colcon, then imports from its install/ (scripts/colcon_check.py).
colcon-check: venv
	$(VPY) scripts/colcon_check.py --work-dir $(BUILD_DIR)/colcon

# --- GPU check: `gpu-pack` here (needs PyPI), then `gpu-check` on the lent GPU machine through the
# device tool (no venv there: its python3). Procedure and results: docs/benchmarks.md, "GPU".
GPU_OUT ?= gpu_out
GPU_ARGS ?=
GPU_PYTHON ?= $(if $(wildcard $(VPY)),$(VPY),$(PYTHON))

gpu-pack:
	bash scripts/gpu_pack.sh

gpu-check:
	PYTHONUNBUFFERED=1 $(GPU_PYTHON) scripts/gpu_check.py --out $(GPU_OUT) $(GPU_ARGS)

clean:
	rm -rf $(BUILD_DIR) *.egg-info $(STAMP_IFACE) $(STAMP_INSTALL)
	find chorus_ros test benchmarks -name __pycache__ -type d -prune -exec rm -rf {} + 2>/dev/null || true
