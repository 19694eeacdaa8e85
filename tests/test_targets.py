import pytest

from edgekit.errors import TargetError
from edgekit.targets import list_targets, load_target

REQUIRED = ["onnx-fp32", "onnx-fp16", "onnx-dynamic", "onnx-int8", "tflite-fp32", "tflite-fp16", "tflite-dynamic", "tflite-int8"]


def test_catalogue_has_every_required_target():
    names = {t.name for t in list_targets()}
    assert set(REQUIRED) <= names


def test_int8_targets_are_static_per_channel_with_calibration():
    for name in ("onnx-int8", "tflite-int8"):
        t = load_target(name)
        assert t.quant.mode == "static" and t.quant.per_channel and t.quant.needs_calibration
    assert load_target("tflite-int8").io_dtype == "int8"


def test_typo_suggests_the_closest_name():
    with pytest.raises(TargetError, match="did you mean 'tflite-int8'"):
        load_target("tflite-in8")


def test_user_target_file_in_working_directory(in_tmp):
    (in_tmp / "targets").mkdir()
    (in_tmp / "targets" / "my-int8.toml").write_text(
        'format = "onnx"\nprecision = "int8"\n[quantize]\nmode = "static"\nbackend = "ort"\ncalib_method = "minmax"\n')
    t = load_target("my-int8")
    assert t.format == "onnx" and t.quant.calib_method == "minmax"
    assert "my-int8" in {x.name for x in list_targets()}


@pytest.mark.parametrize("body,match", [
    ('format = "coreml"\nprecision = "fp32"\n', "format"),
    ('format = "onnx"\nprecision = "int8"\n[quantize]\nmode = "static"\nbackend = "aeq"\n', "backend"),
    ('format = "onnx"\nprecision = "int8"\n[quantize]\nmode = "static"\nbackend = "ort"\ncalib_method = "histogram"\n', "calib_method"),
    ('format = "onnx"\nprecision = "fp32"\nspeed = "fast"\n', "unknown field"),
    ('format = "onnx"\nprecision = \n', "TOML"),
    ('format = "tflite"\nprecision = "int8"\n[quantize]\nmode = "static"\nbackend = "aeq"\n'
     '[[quantize.overrides]]\nlayer = "conv.*"\nprecision = "int4"\n', "overrides.precision"),
    ('format = "tflite"\nprecision = "int8"\n[quantize]\nmode = "static"\nbackend = "aeq"\n'
     '[[quantize.overrides]]\nlayer = "conv(["\nprecision = "float"\n', "not a regular expression"),
    ('format = "tflite"\nprecision = "fp16"\n[quantize]\nmode = "fp16"\nbackend = "aeq"\n'
     '[[quantize.overrides]]\nlayer = "conv"\nprecision = "float"\n', "static int8"),
    ('format = "onnx"\nprecision = "int4"\n[quantize]\nmode = "weight_only"\nbackend = "ort"\nweight_bits = 4\nblock_size = 48\n', "block_size"),
])
def test_bad_target_files_name_the_problem(in_tmp, body, match):
    p = in_tmp / "bad.toml"
    p.write_text(body)
    with pytest.raises(TargetError, match=match):
        load_target(str(p))


def test_overrides_round_trip_through_an_artifact_folder(in_tmp):
    (in_tmp / "t.toml").write_text('format = "tflite"\nprecision = "int8"\n[quantize]\nmode = "static"\nbackend = "aeq"\n'
                                   '[[quantize.overrides]]\nlayer = "^a;$"\nprecision = "int16"\n'
                                   '[[quantize.overrides]]\nlayer = "^b;$"\nprecision = "float"\n')
    t = load_target(str(in_tmp / "t.toml"))
    assert [(o.layer, o.precision) for o in t.quant.overrides] == [("^a;$", "int16"), ("^b;$", "float")]
    art = in_tmp / "art"
    art.mkdir()
    from edgekit.runtime.manifest import Manifest, TensorSpec, write_manifest

    write_manifest(art, Manifest("model.tflite", "tflite", [TensorSpec("x", (1, 4), "float32")], [TensorSpec("y", (1, 2), "float32")],
                                 target=t.to_dict()))
    again = load_target(str(art))
    assert again.quant == t.quant

    from edgekit.quantize.tflite import aeq_recipe

    rules = aeq_recipe(t.quant)
    assert [r["regex"] for r in rules] == [".*", "^a;$", "^b;$"]
    assert rules[1]["op_config"]["activation_tensor_config"]["num_bits"] == 16 and rules[2]["algorithm_key"] == "no_quantize"
