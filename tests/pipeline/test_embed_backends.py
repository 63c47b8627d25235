"""embed.backend onnx / openvino and embed.quantize int8 on the bundled MiniLM (CPU)."""
from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest

from pipeline.config import ConfigError, EmbedConfig
from pipeline.embed import cache_key, model_encoder
from pipeline.embed_backends import BackendError, check

TEXTS = ["How do I sort a list in Python?", "Use sorted(xs) for a new list or xs.sort() in place.",
         "", "  spaces around  ", "A much longer answer. " * 80, "Coffee: 15 g per cup, 93 degrees."]


@pytest.fixture(scope="module")
def torch_vectors():
    return model_encoder(EmbedConfig(), "all-MiniLM-L6-v2", "cpu")(TEXTS)


@pytest.fixture(scope="module")
def export_root(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


@pytest.mark.slow
@pytest.mark.parametrize("backend,quantize,min_cos", [
    ("onnx", "none", 0.9999), ("openvino", "none", 0.9999), ("onnx", "int8", 0.9),
    ("openvino", "int8", 0.5)])
def test_backends_give_the_torch_vectors_up_to_their_precision(torch_vectors, export_root, backend,
                                                               quantize, min_cos, caplog):
    caplog.set_level(logging.INFO, logger="pipeline.embed_backends")
    cfg = EmbedConfig(backend=backend, quantize=quantize)
    vectors = model_encoder(cfg, "all-MiniLM-L6-v2", "cpu", export_root)(TEXTS)
    assert vectors.shape == torch_vectors.shape and np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)  # still normalised
    cosines = (vectors * torch_vectors).sum(axis=1)
    assert cosines.min() >= min_cos, cosines
    # Exported once: a second encoder (another run) reads the exported file.
    caplog.clear()
    again = model_encoder(cfg, "all-MiniLM-L6-v2", "cpu", export_root)(TEXTS)
    assert not [r for r in caplog.records if "exported" in r.getMessage()]
    np.testing.assert_allclose(again, vectors, atol=1e-6)


def test_workers_never_export_the_model_the_driver_does(tmp_path):
    """On an engine with workers the driver exports the model before they start; a worker
    that finds no exported file refuses to write one (the single-writer rule)."""
    from pipeline.catalog import WorkerWriteError, worker_unit

    cfg = EmbedConfig(backend="onnx")
    encoder = model_encoder(cfg, "all-MiniLM-L6-v2", "cpu", tmp_path / "models")
    with worker_unit("embed chunk 1/1"), pytest.raises(WorkerWriteError, match="embed chunk"):
        encoder.export()
    assert not list((tmp_path / "models").rglob("*.onnx"))
    path = encoder.export()  # in the driver
    assert path.is_file()
    with worker_unit("embed chunk 1/1"):  # the worker then reads it
        assert model_encoder(cfg, "all-MiniLM-L6-v2", "cpu", tmp_path / "models").export() == path
    assert model_encoder(EmbedConfig(), "all-MiniLM-L6-v2", "cpu").export() is None


def test_backend_and_quantisation_are_in_the_cache_key_and_torch_keys_stay():
    base = EmbedConfig()
    keys = {cache_key(dataclasses.replace(base, backend=b, quantize=q), "all-MiniLM-L6-v2")
            for b, q in [("torch", "none"), ("onnx", "none"), ("onnx", "int8"),
                         ("openvino", "none"), ("openvino", "int8")]}
    assert len(keys) == 5
    from pipeline.embed import cache_key_parts

    assert "backend" not in cache_key_parts(base, "all-MiniLM-L6-v2")  # old torch caches still hit


def test_bad_backend_settings_are_config_errors():
    with pytest.raises(BackendError, match="embed.backend='tensorrt'"):
        check("tensorrt", "none", "cpu")
    with pytest.raises(BackendError, match="quantize=int8 needs embed.backend onnx or openvino"):
        check("torch", "int8", "cpu")
    with pytest.raises(BackendError, match="CPU only"):
        check("openvino", "none", "cuda")
    with pytest.raises(ConfigError, match="embed.quantize='int4'"):
        model_encoder(EmbedConfig(backend="onnx", quantize="int4"), "all-MiniLM-L6-v2", "cpu")
