"""CPU inference backends of the embed stage: ONNX Runtime and OpenVINO, fp32 or int8.

``embed.backend: torch | onnx | openvino`` and ``embed.quantize: none | int8``. For a
backend other than torch the sentence-transformers model's first module (the Hugging Face
transformer) is exported once to ONNX from the local model (no hub), optionally quantised,
and cached under ``<workdir>/cache/models/<model slug>-<key>/``; the model's own pooling
and normalisation modules still run on its output, so only the transformer's arithmetic
changes. Each export is written to a temporary folder and renamed into place, so a killed
export leaves nothing half-written.

- ``onnx``: ``torch.onnx.export`` (opset 17, dynamic batch and length) run by ONNX Runtime;
  ``int8``: dynamic quantisation of the weight matrices (per channel, MatMul only; the
  attention products of two activations stay float).
- ``openvino``: the same ONNX file compiled by OpenVINO; ``int8``: NNCF post-training
  static quantisation (transformer preset) calibrated on the texts of the demo data the
  project generates (``pipeline.demo``), so the export needs no download and is the same
  on every machine.

CPU only: on a GPU the stage runs torch in fp16 (asking for another backend there is a
config error). The packages (onnx, onnxruntime, openvino, nncf) are the optional extra
``cpu-fast`` (``pip install -e ".[cpu-fast]"``; the dev install has them).
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnx", "openvino")
QUANTIZE = ("none", "int8")
EXPORT_VERSION = 1
# Texts of the demo data used to calibrate OpenVINO's int8 quantisation.
CALIBRATION_TEXTS = 300
_PACKAGES = {"onnx": ("onnx", "onnxruntime"), "openvino": ("onnx", "openvino", "nncf")}

Runner = Callable[[dict[str, np.ndarray]], np.ndarray]
# The file each (backend, quantize) runs; OpenVINO compiles the fp32 ONNX file itself.
_EXPORTED = {("onnx", "none"): "model.onnx", ("onnx", "int8"): "model-int8.onnx",
             ("openvino", "none"): "model.onnx", ("openvino", "int8"): "model-int8.xml"}


class BackendError(ValueError):
    """A backend setting that cannot work here; the message says what to change."""


def check(backend: str, quantize: str, device: str) -> None:
    """Raise BackendError for an unknown or unusable embed.backend / embed.quantize."""
    if backend not in BACKENDS:
        raise BackendError(f"embed.backend={backend!r}: expected one of {', '.join(BACKENDS)}")
    if quantize not in QUANTIZE:
        raise BackendError(f"embed.quantize={quantize!r}: expected one of {', '.join(QUANTIZE)}")
    if backend == "torch":
        if quantize != "none":
            raise BackendError("embed.quantize=int8 needs embed.backend onnx or openvino (torch "
                               "runs the model as it is: fp32 on the CPU, fp16 on a GPU)")
        return
    if device != "cpu":
        raise BackendError(f"embed.backend={backend} runs on the CPU only; on {device} use "
                           "embed.backend: torch (fp16 on a GPU)")
    missing = [p for p in _PACKAGES[backend] if not _importable(p)]
    if missing:
        raise BackendError(f"embed.backend={backend} needs {', '.join(missing)}: "
                           "pip install -e \".[cpu-fast]\" (or pip install " + " ".join(missing) + ")")


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def key_parts(backend: str, quantize: str) -> dict[str, Any]:
    """What a backend adds to the embedding cache key (nothing for torch, so the torch
    caches of before stay valid)."""
    if backend == "torch":
        return {}
    return {"backend": backend, "quantize": quantize, "export_version": EXPORT_VERSION}


# ----------------------------------------------------------------------------- export

def _positional(auto_model, names: list[str]):
    """The transformer as a module of positional inputs (``names`` in order) returning its
    last hidden state: what torch.onnx.export traces."""
    import torch

    class Positional(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = auto_model

        def forward(self, *inputs):
            return self.inner(**dict(zip(names, inputs)), return_dict=True).last_hidden_state

    return Positional()


def export_onnx(st_model, sample: dict[str, np.ndarray], path: Path) -> None:
    """Export ``st_model[0]``'s transformer to ``path`` (inputs named as ``sample``'s keys)."""
    import copy

    import torch

    names = list(sample)
    auto_model = copy.deepcopy(st_model[0].auto_model).float().cpu().eval()
    wrapped = _positional(auto_model, names).eval()
    args = tuple(torch.from_numpy(sample[n][:2, :16]) for n in names)
    axes = {n: {0: "batch", 1: "tokens"} for n in names} | {"last_hidden_state": {0: "batch", 1: "tokens"}}
    with torch.no_grad():
        torch.onnx.export(wrapped, args, str(path), input_names=names,
                          output_names=["last_hidden_state"], dynamic_axes=axes,
                          opset_version=17, dynamo=False)


def quantize_onnx_int8(src: Path, dst: Path) -> None:
    """Dynamic int8 quantisation of the weight MatMuls (per channel) of ``src`` -> ``dst``."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(src))
    weights = {t.name for t in model.graph.initializer}
    activation_products = [n.name for n in model.graph.node if n.op_type == "MatMul"
                           and not any(i in weights for i in n.input)]
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                     op_types_to_quantize=["MatMul"], nodes_to_exclude=activation_products)


def openvino_int8(src: Path, dst: Path, calibration: list[dict[str, np.ndarray]]) -> None:
    """NNCF static int8 quantisation (transformer preset) of ``src`` -> ``dst`` (.xml)."""
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(src))
    quantized = nncf.quantize(model, nncf.Dataset(calibration), model_type=nncf.ModelType.TRANSFORMER,
                              subset_size=len(calibration))  # NNCF counts items (batches)
    ov.save_model(quantized, str(dst))


def _demo_texts(n: int) -> list[str]:
    """The first ``n`` prompt / response texts of the generated demo data, turns joined as
    everywhere (texts whose lone surrogate had to be replaced are left out)."""
    from features.turns import join_turns
    from pipeline.data import TEXT_COLUMNS, parse_turns
    from pipeline.demo import DEMO_SEED, N_TRAIN, make_demo

    frame = make_demo(N_TRAIN, DEMO_SEED)
    texts = [join_turns(parse_turns(cell)) for col in TEXT_COLUMNS for cell in frame[col]]
    return [t for t in texts if "\ufffd" not in t][:n]


def calibration_batches(features: Callable[[list[str]], dict[str, np.ndarray]],
                        batch: int = 16) -> list[dict[str, np.ndarray]]:
    """Feature batches of CALIBRATION_TEXTS texts of the demo data."""
    texts = _demo_texts(CALIBRATION_TEXTS)
    return [features(texts[i:i + batch]) for i in range(0, len(texts), batch)]


def exported_model(st_model, backend: str, quantize: str, folder: Path,
                   features: Callable[[list[str]], dict[str, np.ndarray]]) -> Path:
    """The exported (and quantised) model file in ``folder``, made once."""
    name = _EXPORTED[(backend, quantize)]
    target = folder / name
    if target.is_file():
        return target
    from pipeline.catalog import check_driver_write, file_lock

    # Exported by the driver (pipeline.embed exports before starting workers): a worker
    # that finds no file refuses to write one.
    check_driver_write(target)
    folder.mkdir(parents=True, exist_ok=True)
    with file_lock(folder / ".lock"):
        if target.is_file():
            return target
        t0 = time.perf_counter()
        tmp = folder / f".tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        onnx_path = folder / "model.onnx"
        if not onnx_path.is_file():
            export_onnx(st_model, features(["probe text", "a second, longer probe text"]),
                        tmp / "model.onnx")
            os.replace(tmp / "model.onnx", onnx_path)
        if quantize == "int8" and backend == "onnx":
            quantize_onnx_int8(onnx_path, tmp / name)
        elif quantize == "int8" and backend == "openvino":
            openvino_int8(onnx_path, tmp / name, calibration_batches(features))
            os.replace(tmp / name.replace(".xml", ".bin"), folder / name.replace(".xml", ".bin"))
        if (tmp / name).is_file():
            os.replace(tmp / name, target)
        shutil.rmtree(tmp, ignore_errors=True)
        log.info("embed: exported %s (%s, %s) in %.1fs -> %s", type(st_model[0].auto_model).__name__,
                 backend, quantize, time.perf_counter() - t0, target)
    return target


# ----------------------------------------------------------------------------- runners

def make_runner(path: Path, backend: str, threads: int | None = None) -> Runner:
    """A function: features (numpy int64 arrays) -> last hidden state float32 [B, T, H]."""
    threads = threads or max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                             else (os.cpu_count() or 1))
    if backend == "onnx":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        return lambda feats: session.run(None, {n: feats[n] for n in names})[0]
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                          "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    names = [i.get_any_name() for i in compiled.inputs]
    return lambda feats: np.asarray(request.infer({n: feats[n] for n in names})[0])


def pool_outputs(st_model, hidden: np.ndarray, features: dict[str, Any]):
    """The model's own modules after the transformer (pooling, normalisation ...) applied to
    ``hidden`` -> the sentence embeddings tensor [B, dim]."""
    import torch

    feats = {k: v for k, v in features.items()}
    feats["token_embeddings"] = torch.from_numpy(np.ascontiguousarray(hidden, dtype=np.float32))
    for module in list(st_model)[1:]:
        feats = module(feats)
    return feats["sentence_embedding"]
