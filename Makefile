# One-command set-up: `make demo` and `make test` install what they need first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXTRAS := train,serve,onnx,aws,infra,dev
CHROMIUM := /usr/bin/chromium
PORT ?= 8000
INFRA := infra
CDK_CLI := $(INFRA)/node_modules/.installed
# The CDK app runs on jsii, which prints a banner on every start when Node.js is past its end of
# life; the CLI pinned in infra/package.json is what is supported. No usage data leaves the CLI.
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := 20
export CDK_DISABLE_CLI_TELEMETRY := true

.PHONY: install demo test test-fast lint format browser bench clean lambda-package \
	sagemaker-sources synth fuzz

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# Pinned first so pip takes the CPU wheel instead of resolving a CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

install: $(STAMP)

# Debian's Chromium for the browser tests (Playwright drives it through executable_path).
browser:
	@test -x $(CHROMIUM) || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

demo: install
	$(BIN)/medsearch demo --port $(PORT)

test: install browser synth
	$(BIN)/python -m pytest -q

test-fast: install lambda-package sagemaker-sources
	$(BIN)/python -m pytest -q -m "not slow"

# ruff includes bandit's S rules (pyproject.toml); the dependency audit fails on a known
# vulnerability and says so when no advisory data can be reached (a skip, not a clean bill).
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m tests.support.dependency_audit

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Fuzzing with large budgets (`make test` runs the same tests with small ones). Schemathesis runs
# every phase (examples, coverage, fuzzing, stateful) and every check against the served schema
# of a small real index on 127.0.0.1; FUZZ_EXAMPLES examples per operation, seed FUZZ_SEED.
# Atheris fuzzes the image decoder and the manifest reader for FUZZ_SECONDS each, seeded from
# tests/support/hostile/; the corpus grows in build/fuzz/<name>/corpus/ from run to run, and a
# crash stops the target with its input left in build/fuzz/<name>/.
FUZZ_EXAMPLES ?= 300
FUZZ_SEED ?= 0
FUZZ_SECONDS ?= 300
fuzz: install
	MEDSEARCH_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) MEDSEARCH_FUZZ_SEED=$(FUZZ_SEED) \
		$(BIN)/python -m pytest -q -s tests/fuzz/test_schemathesis.py
	$(BIN)/python -m tests.fuzz.fuzz_images -max_total_time=$(FUZZ_SECONDS) -timeout=60 -rss_limit_mb=3072
	$(BIN)/python -m tests.fuzz.fuzz_manifest -max_total_time=$(FUZZ_SECONDS) -timeout=60 -rss_limit_mb=3072

# bench/opensearch.py starts a local OpenSearch node (Java 17 + Maven; skipped without them);
# bench/fusion_depth.py measures hybrid depth on the demo (built in build/demo if missing) and MedPix.
# bench/cold_start.py exports a ViT-B/32-sized CLIP once (build/bench/) and times the search API's
# cold start in fresh processes, also on the built package where python3.12 is installed.
# bench/train_data.py times the training data path and validation epoch (quick; --full for more).
# bench/gpu.py measures training, loading and vectorizing on a GPU (says so and ends without one).
# bench/query_latency.py times every mode through a served API with a ViT-B/32-shaped model.
# bench/ann.py, index_build.py, vectorize_cpu.py, scale.py and memory.py (issue #12's production
# sizes) run here in their quick modes; their full sizes (185k, 1M cached under build/bench/)
# are run without --quick, as bench/README.md says.
bench: install lambda-package
	$(BIN)/python bench/search_latency.py
	$(BIN)/python bench/query_latency.py
	$(BIN)/python bench/load.py
	$(BIN)/python bench/opensearch.py
	$(BIN)/python bench/fusion_depth.py
	$(BIN)/python bench/cold_start.py
	$(BIN)/python bench/train_data.py
	$(BIN)/python bench/gpu.py
	$(BIN)/python bench/ann.py --quick
	$(BIN)/python bench/index_build.py --quick
	$(BIN)/python bench/vectorize_cpu.py --quick
	$(BIN)/python bench/scale.py --quick
	$(BIN)/python bench/memory.py --quick

# The Lambdas' zip content, build/search_api/, build/index_loader/ and build/pipeline/ (wheels for
# the python3.12 runtime, manylinux_2_28 or older; no torch), each checked: unzipped size within the 250 MB
# limit, no forbidden module, every wheel and shared library loadable there.
lambda-package: install
	$(BIN)/python -m lambdas.package search_api index_loader pipeline

# The SageMaker source archives (build/sagemaker/*.tar.gz) the CDK app uploads as assets.
sagemaker-sources: install
	$(BIN)/python -m infra.sources

# The CDK CLI pinned in infra/package.json (npm ci: exactly the lock file's versions).
$(CDK_CLI): $(INFRA)/package.json $(INFRA)/package-lock.json
	cd $(INFRA) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# The CloudFormation template (infra/cdk.out/), with no AWS account: the app runs cdk-nag's
# AwsSolutions checks on every synth, then cfn-lint checks the template (errors fail the build;
# W3005 is CDK's own DependsOn written beside a GetAtt, harmless and not ours to change).
synth: lambda-package sagemaker-sources $(CDK_CLI)
	cd $(INFRA) && npx cdk synth --quiet --no-notices
	$(BIN)/cfn-lint $(INFRA)/cdk.out/medsearch.template.json \
		--non-zero-exit-code error --ignore-checks W3005

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache .mypy_cache \
		$(INFRA)/node_modules $(INFRA)/cdk.out
