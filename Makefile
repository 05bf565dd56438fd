# mae-large: `make demo` reconstructs a photograph, `make test` runs the test suite.
PYTHON ?= python3
VENV ?= .venv
# The CPU build of torch; e.g. `make install TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu124"`.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: install test test-fast lint demo figures bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

# The test suite, then the requirements' noise-loss gate (random init unless data/ has the full checkpoint).
test: install
	MPLBACKEND=Agg $(BIN)/python -m pytest -q
	$(BIN)/mae-large loss --noise --check

# The quick loop while working: every test but the full-size ViT-L ones (marked slow). CI runs `make test`.
test-fast: install
	MPLBACKEND=Agg $(BIN)/python -m pytest -q -m "not slow"

# From a fresh clone to a reconstruction of a real photograph by the real pretrained model.
# The photograph (Grace Hopper, U.S. Navy, public domain) ships with matplotlib. Offline, the download
# step stops with the manual alternative: no figure is ever drawn from random weights here.
DEMO_CKPT ?= data/mae_visualize_vit_large.pth
demo: install
	@test -f $(DEMO_CKPT) || $(BIN)/mae-large download visualize --dest $(dir $(DEMO_CKPT))
	$(BIN)/mae-large reconstruct "$$($(BIN)/python -c "import matplotlib.cbook as c; print(c.get_sample_data('grace_hopper.jpg', asfileobj=False))")" \
		--checkpoint $(DEMO_CKPT) --out outputs
	@echo "figure: outputs/grace_hopper.png"

# The README's figures: two small MAEs pre-trained here on images scikit-learn and matplotlib ship (about an hour on
# two CPU cores, most of it the photographs' model), then the figures of a held-out photograph.
figures: install
	MAE_LARGE=$(BIN)/mae-large PYTHON=$(BIN)/python docs/figures/make_figures.sh

bench: install
	$(BIN)/python bench/run_all.py

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache outputs
