import json

import pytest
from conftest import assert_clean_error, run_cli

from mnv2_edge.targets.errors import UserError
from mnv2_edge.compile.generation.variants import OFFICIAL_TABLE, Variant, make_divisible, official_variants


def test_channel_rule_matches_reference_implementations():
    assert make_divisible(32 * 0.35) == 16  # 11.2 rounds to 8, below 90%, so one step up
    assert make_divisible(16 * 0.35) == 8
    assert make_divisible(24 * 0.75) == 24  # 18 -> 16 is below 90% of 18
    assert make_divisible(320 * 1.4) == 448
    assert make_divisible(1280 * 1.4) == 1792


def test_network_follows_table_2():
    layers = Variant(1.0, 224).layers
    depthwise = [l for l in layers if l.op == "depthwise"]
    assert len(depthwise) == 17  # 17 bottleneck blocks
    assert sum(l.op == "add" for l in layers) == 10
    assert [l.out_channels for l in layers if l.name.endswith("_project")][-1] == 320
    head = next(l for l in layers if l.name == "head")
    assert (head.out_channels, head.out_size) == (1280, 7)
    assert layers[-2].out_channels == 1000 and layers[-1].op == "softmax"
    assert Variant(1.4, 224).layers[-4].out_channels == 1792  # scaled above width 1.0
    assert Variant(0.5, 224).layers[-4].out_channels == 1280  # kept at 1280 below


@pytest.mark.parametrize("width,resolution", sorted(OFFICIAL_TABLE))
def test_official_macs_and_params_match_the_published_table(width, resolution):
    published = OFFICIAL_TABLE[(width, resolution)]
    table_macs, table_params = published.macs_m, published.params_m
    variant = Variant(width, resolution)
    assert abs(variant.macs - table_macs * 1e6) <= max(0.02 * table_macs * 1e6, 1.5e6)
    assert abs(variant.params - table_params * 1e6) <= 0.02 * table_params * 1e6


def test_any_width_and_resolution_in_range():
    variant = Variant(0.6, 113)
    assert variant.layers[-4].in_size == 4 and variant.macs > Variant(0.5, 96).macs


@pytest.mark.parametrize("width,resolution", [(0.3, 224), (1.5, 224), (1.0, 95), (1.0, 225)])
def test_out_of_range_variants_are_refused(width, resolution):
    with pytest.raises(UserError, match="out of range"):
        Variant(width, resolution)


def test_list_variants_json():
    result = run_cli("compile/build.py", "--list-variants", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert len(rows) == 22 == len(official_variants())
    assert all(set(row) == {"width", "resolution", "macs", "params"} for row in rows)
    by_key = {(r["width"], r["resolution"]): r for r in rows}
    assert abs(by_key[(1.0, 224)]["macs"] - 300e6) < 1.5e6
    assert isinstance(by_key[(0.35, 96)]["params"], int)


def test_list_variants_table_is_readable():
    result = run_cli("compile/build.py", "--list-variants")
    assert result.returncode == 0
    assert len(result.stdout.strip().splitlines()) == 23 and "MMACs" in result.stdout


@pytest.mark.parametrize("flags,word", [(["--width", "2.0"], "width"), (["--res", "300"], "resolution"),
                                        (["--dtype", "int4"], "dtype")])
def test_out_of_range_flags_exit_2(flags, word, tmp_path):
    assert_clean_error(run_cli("compile/build.py", "--target", "host", "--out", tmp_path, *flags), word)


def _count_from_file(data: bytes) -> tuple[int, int, list[int]]:
    """MACs, parameters and the output shape, counted from a TFLite file's ops and tensors alone."""
    import numpy as np
    import tflite

    model = tflite.Model.GetRootAsModel(data, 0)
    graph = model.Subgraphs(0)
    shape = lambda i: [int(d) for d in graph.Tensors(i).ShapeAsNumpy()]  # noqa: E731
    macs = params = 0
    for k in range(graph.OperatorsLength()):
        op = graph.Operators(k)
        name = tflite.opcode2name(model.OperatorCodes(op.OpcodeIndex()).BuiltinCode())
        if name not in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            continue
        weight, bias, out = shape(op.Inputs(1)), shape(op.Inputs(2)), shape(op.Outputs(0))
        params += int(np.prod(weight)) + int(np.prod(bias))
        spatial = out[1] * out[2] if len(out) == 4 else 1
        macs += spatial * int(np.prod(weight)) if name != "DEPTHWISE_CONV_2D" else spatial * int(np.prod(weight[1:]))
    return macs, params, shape(graph.Outputs(0))


@pytest.mark.parametrize("expansion,classes", [(5, 1000), (10, 1000), (6, 19), (8, 10)])
def test_expansion_and_classes_knobs_build_the_network_they_name(expansion, classes):
    """The paper's other knobs: a generated file with expansion t and N classes has the MACs and
    params variants.py reports (counted from the file), t x the block input channels in every
    expansion after the first bottleneck, and N outputs."""
    from mnv2_edge.compile.generation.generate import variant_tflite

    variant = Variant(0.5, 128, num_classes=classes, expansion=expansion)
    macs, params, output = _count_from_file(variant_tflite(variant, "float32"))
    assert (macs, params) == (variant.macs, variant.params) and output == [1, classes]
    expands = [layer for layer in variant.layers if layer.name.endswith("_expand")]
    assert expands and all(layer.out_channels == expansion * layer.in_channels for layer in expands)
    assert variant.tag == "0.5_128" + (f"_t{expansion}" if expansion != 6 else "") + (f"_c{classes}" if classes != 1000 else "")
    default = Variant(0.5, 128)
    if expansion == 6:  # only the classifier differs: (classes - 1000) x (1280 inputs + 1 bias)
        assert variant.params - default.params == (classes - 1000) * (1280 + 1)
    assert not variant.is_official and default.is_official
