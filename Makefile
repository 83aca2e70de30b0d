# The two commands of the README: `make run` and `make test`. `make setup` is their shared
# first step; it does nothing while .venv is up to date with pyproject.toml.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# No telemetry prompt or upload, in CI or anywhere else.
export KEDRO_DISABLE_TELEMETRY := 1
export DO_NOT_TRACK := 1
export DVC_NO_ANALYTICS := 1

.PHONY: setup run test test-fast repro viz viz-build mlflow-ui benchmark clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] >= (3, 11), f"Python 3.11 or newer is required, found {sys.version.split()[0]}"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "Installing the project and its dependencies into $(VENV): on Linux about 6.6 GB, 3.2 GB of it"
	@echo "PyTorch's CUDA libraries (pulled in even without a GPU), and a few minutes. pip shows its progress."
	$(BIN)/python -m pip install --progress-bar on -e ".[test]"
	touch $(STAMP)

run: setup
	$(BIN)/kedro run

test: setup
	$(BIN)/python -m pytest

test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

repro: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

viz: setup
	$(BIN)/kedro viz run

# the same graph as a static site in build/, with each dataset's preview (`kedro viz run` shows
# them live; `kedro viz build` leaves them out unless asked)
viz-build: setup
	$(BIN)/kedro viz build --include-previews

# MLflow 3.17's UI opens an experiment on its GenAI pages (Traces, a pop-up) whatever the experiment's
# tags say, unless the address asks for workflowType=machine_learning or the browser once chose
# "Model training" (top left; it remembers). This prints the address of the runs table.
MLFLOW_PORT ?= 5000
define RUNS_TABLE_ADDRESS
import sqlite3
try:
    row = sqlite3.connect("file:mlflow.db?mode=ro", uri=True).execute(
        "select experiment_id from experiments where name = 'vtp-kedro'").fetchone()
except sqlite3.Error:
    row = None
page = f"experiments/{row[0]}" if row else "experiments"
print(f"The runs table: http://127.0.0.1:$(MLFLOW_PORT)/#/{page}?workflowType=machine_learning")
endef
export RUNS_TABLE_ADDRESS

mlflow-ui: setup
	@$(BIN)/python -c "$$RUNS_TABLE_ADDRESS"
	@# every worker of the server warns that MLflow imports a deprecated Starlette module: MLflow's
	@# business, nothing a user of this project can act on
	PYTHONWARNINGS="ignore:starlette.middleware.wsgi is deprecated" \
	  $(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --port $(MLFLOW_PORT)

benchmark: setup
	$(BIN)/python benchmarks/data_filtering.py

clean:
	rm -rf $(VENV)
