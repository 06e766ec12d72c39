"""Fixtures for analyzer_onnx tests: real ONNX models built with the onnx helper API (no torch needed)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from ravn_analyzers.onnx.model import FEATURE_SCHEMA, FEATURE_VERSION
from ravn_analyzers.onnx.train import TrainParams, export_onnx

#: the cyclic model's vocabulary: x86_64 syscall numbers 0..9 as tokens; "normal" is 0,1,2,...,9,0,1,...
CYCLE = [str(i) for i in range(10)]


def metadata(vocab: list[str], window: int, context: int, **over: str) -> dict[str, str]:
    meta = {
        "ravn.schema": FEATURE_SCHEMA,
        "ravn.schema_version": FEATURE_VERSION,
        "ravn.model_name": "cyclic-test",
        "ravn.model_version": "0.0.1",
        "ravn.vocab": json.dumps(vocab),
        "ravn.window": str(window),
        "ravn.context": str(context),
        "ravn.scoring": json.dumps({"min_events": 32, "exit_min_events": 8, "horizon": 256}),
        "ravn.calibration": json.dumps({"thresholds": {"0.05": 0.5, "0.01": 1.0, "0.001": 2.0}, "n_heldout": 0}),
    }
    meta.update(over)
    return meta


def cyclic_model_bytes(window: int = 32, **meta_over: str) -> bytes:
    """A real RAVN model whose weights are set by hand: it predicts token i+1 after token i (cyclically) with
    probability ~0.999, so a cyclic stream costs ~0.004 nats per token and anything else ~8."""
    v = len(CYCLE) + 2
    p = TrainParams(embed=v, hidden=v, kernel=1, layers=1, window=window)
    emb = np.eye(v, dtype=np.float32)
    emb[0] = 0.0
    conv = np.eye(v, dtype=np.float32)[:, :, None]  # [hid, embed, k=1]
    out = np.zeros((v, v), dtype=np.float32)
    for a in range(2, v):
        out[2 + (a - 2 + 1) % len(CYCLE), a] = 8.0
    weights = {"emb.weight": emb, "convs.0.weight": conv, "convs.0.bias": np.zeros(v, np.float32),
               "out.weight": out, "out.bias": np.zeros(v, np.float32)}
    return export_onnx(weights, p, metadata(CYCLE, window, p.context, **meta_over))


@pytest.fixture
def cyclic_model(tmp_path: Path) -> Callable[..., Path]:
    def make(name: str = "cyclic.onnx", **kw: Any) -> Path:
        path = tmp_path / name
        path.write_bytes(cyclic_model_bytes(**kw))
        return path

    return make


@pytest.fixture
def wrong_input_model(tmp_path: Path) -> Path:
    """Valid ONNX with RAVN metadata, but its input is float [N, W, 3] instead of int64 [N, W]."""
    x = helper.make_tensor_value_info("tokens", TensorProto.FLOAT, ["N", 32, 3])
    y = helper.make_tensor_value_info("nll", TensorProto.FLOAT, ["N", 32])
    node = helper.make_node("ReduceSum", ["tokens", "axes"], ["nll"], keepdims=0)
    axes = numpy_helper.from_array(np.array([2], dtype=np.int64), "axes")
    g = helper.make_graph([node], "wrong", [x], [y], initializer=[axes])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    helper.set_model_props(m, metadata(CYCLE, 32, 1))
    onnx.checker.check_model(m)
    path = tmp_path / "wrong_input.onnx"
    path.write_bytes(m.SerializeToString())
    return path


@pytest.fixture
def fails_at_run_model(tmp_path: Path) -> Path:
    """The cyclic model with a Reshape to a fixed batch of RUN_WINDOWS appended: it loads and passes the load-time
    test inference (RUN_WINDOWS windows), then fails for real inside onnxruntime on any other batch size."""
    from ravn_analyzers.onnx.model import RUN_WINDOWS

    m = onnx.load_from_string(cyclic_model_bytes())
    g = m.graph
    for node in g.node:
        for i, o in enumerate(node.output):
            if o == "nll":
                node.output[i] = "nll_raw"
    g.initializer.append(numpy_helper.from_array(np.array([RUN_WINDOWS, -1], dtype=np.int64), "fixed_shape"))
    g.node.append(helper.make_node("Reshape", ["nll_raw", "fixed_shape"], ["nll"]))
    onnx.checker.check_model(m)
    path = tmp_path / "fails.onnx"
    path.write_bytes(m.SerializeToString())
    return path
