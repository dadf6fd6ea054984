"""ONNX export of the eval model: the file runs in onnxruntime with standard ops and
gives PyTorch's features for any batch size."""

import pytest
import torch

import pan_model
from pan_model.models.export import export_onnx, onnx_agreement

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

INPUT_SIZE = (64, 32)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = pan_model.build_model("pan", 11, num_parts=5, backbone="osnet_x0_25")
    model.train()(torch.randn(6, 3, *INPUT_SIZE))  # non-trivial BN running statistics
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / "pan.onnx", input_size=INPUT_SIZE)
    return model, path


def test_onnx_features_match_pytorch(exported):
    model, path = exported
    for batch in (1, 3):  # the batch dimension is dynamic
        images = torch.randn(batch, 3, *INPUT_SIZE, generator=torch.Generator().manual_seed(batch))
        assert onnx_agreement(model, path, images) >= 0.9999


def test_onnx_graph_uses_only_standard_ops(exported):
    _, path = exported
    graph = onnx.load(str(path)).graph
    assert {op.domain for op in graph.node} <= {"", "ai.onnx"}
    assert [i.name for i in graph.input] == ["images"] and [o.name for o in graph.output] == ["features"]
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.initializer)


def test_export_restores_model_state(exported):
    model, _ = exported
    assert model.training and model.pool_backend == "auto"
