# The two commands from the README: `make demo` and `make test`.
# Each creates .venv and installs what it needs on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# CPU build of torch where it lies on disk; elsewhere pip picks the usual build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

# A quick tier for while you work (not what CI runs): the protocol, the stage
# declarations and hashing, camera math, the importers and the bad-input checks,
# on tiny inputs.
FAST_TESTS := tests/test_stages.py tests/test_ssim.py tests/test_camera_math.py tests/test_colmap_io.py \
	tests/test_importers.py tests/test_protocol_bad_input.py tests/test_bad_photos.py tests/test_bad_input.py \
	tests/test_build_addon.py

.PHONY: install demo test test-fast
install: $(STAMP)

demo: $(STAMP)
	$(PY) -m backend demo

# The whole suite under bpy 5.0.1, then the add-on's tests (marked every_blender) under
# bpy 4.2.0 and 4.5.15, each in an environment of its own that the script makes.
test: $(STAMP)
	$(PY) -m pytest -ra
	$(PY) tests/every_blender.py

test-fast: $(STAMP)
	$(PY) -m pytest -ra $(FAST_TESTS)
