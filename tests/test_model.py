"""Freeze depth, BatchNorm policy, parameter groups and the model tables, on the real ResNet50."""

from __future__ import annotations

import pytest
import torch

from tuner.config import TRAINABLE_CHOICES, AugmentConfig, TrainConfig
from tuner.errors import TunerError
from tuner.model.resnet import (
    calibrate_batchnorm,
    freeze,
    make_optimizer,
    new_resnet50,
    parameter_groups,
    set_train_mode,
    stage_of,
    trainable_stages,
)
from tuner.model.summary import (
    layer_tree,
    layer_tree_text,
    parameter_table,
    stage_output_shapes,
    stage_summary,
)

NUM_CLASSES = 10
# Parameter counts of torchvision's ResNet50 per stage (pinned, as torchvision's own tests do).
STAGE_PARAMS = {"stem": 9_536, "layer1": 215_808, "layer2": 1_219_584, "layer3": 7_098_368,
                "layer4": 14_964_736, "head": 2048 * NUM_CLASSES + NUM_CLASSES}
EXPECTED_TRAINABLE = {
    "head": 20_490,
    "layer4": 20_490 + 14_964_736,
    "layer3": 20_490 + 14_964_736 + 7_098_368,
    "layer2": 20_490 + 14_964_736 + 7_098_368 + 1_219_584,
    "layer1": 20_490 + 14_964_736 + 7_098_368 + 1_219_584 + 215_808,
    "all": 23_528_522,
}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return new_resnet50(NUM_CLASSES)


@pytest.mark.parametrize("trainable", TRAINABLE_CHOICES)
def test_trainable_parameter_counts_are_pinned_per_depth(model, trainable):
    freeze(model, trainable)
    count = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert count == EXPECTED_TRAINABLE[trainable]
    summary = stage_summary(model, trainable).set_index("stage")
    assert summary.loc["total", "trainable"] == count
    assert summary.loc["total", "params"] == sum(STAGE_PARAMS.values())
    for stage, n in STAGE_PARAMS.items():
        assert summary.loc[stage, "params"] == n


def test_unknown_depth_names_the_choices():
    with pytest.raises(TunerError, match="head, layer4, layer3, layer2, layer1, all"):
        trainable_stages("layer5")


def test_stage_of_names():
    assert stage_of("conv1.weight") == stage_of("bn1.bias") == "stem"
    assert stage_of("layer3.5.bn2.running_mean") == "layer3"
    assert stage_of("fc.weight") == "head"


@pytest.mark.parametrize("bn", ["frozen", "train"])
def test_a_step_changes_exactly_the_trainable_parameters(bn):
    torch.manual_seed(0)
    model = new_resnet50(3)
    config = TrainConfig(trainable="layer4", lr=1e-3, bn=bn)
    freeze(model, config.trainable)
    set_train_mode(model, config.trainable, config.bn)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = make_optimizer(parameter_groups(model, config, pretrained=True), config)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    # The new head starts at zero, so the backbone's first gradient arrives on the second step.
    torch.nn.functional.cross_entropy(model(x), y).backward()
    assert model.layer4[0].conv1.weight.grad.abs().sum() == 0
    optimizer.step()
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    for name, p in model.named_parameters():  # every trainable parameter receives a gradient (timm's check)
        assert (p.grad is not None) == p.requires_grad, name
        if p.requires_grad:
            assert p.grad.abs().sum() > 0, name
    optimizer.step()
    after = model.state_dict()
    for name, value in after.items():
        stage = stage_of(name)
        changed = not torch.equal(value, before[name])
        if name.endswith("num_batches_tracked"):
            continue
        if stage in ("layer4", "head"):
            if "running" not in name:
                assert changed, name
        elif "running" in name:
            assert changed == (bn == "train"), name  # frozen stages keep their BatchNorm statistics
        else:
            assert not changed, name


def test_parameter_groups_split_head_backbone_and_decay():
    model = new_resnet50(3)
    config = TrainConfig(trainable="layer3", lr=0.02, weight_decay=1e-3)
    groups = {g["name"]: g for g in parameter_groups(model, config, pretrained=True)}
    assert set(groups) == {"head", "head (no decay)", "backbone", "backbone (no decay)"}
    assert groups["head"]["lr"] == 0.02 and groups["backbone"]["lr"] == pytest.approx(0.002)
    assert groups["backbone (no decay)"]["weight_decay"] == 0 and groups["backbone"]["weight_decay"] == 1e-3
    assert all(p.ndim == 1 for p in groups["backbone (no decay)"]["params"])
    counted = sum(p.numel() for g in groups.values() for p in g["params"])
    assert counted == STAGE_PARAMS["layer3"] + STAGE_PARAMS["layer4"] + 2048 * 3 + 3
    random_groups = {g["name"]: g for g in parameter_groups(model, config, pretrained=False)}
    assert random_groups["backbone"]["lr"] == 0.02  # nothing pretrained to preserve: same rate
    explicit = TrainConfig(trainable="layer3", lr=0.02, backbone_lr_mult=0.5)
    assert {g["name"]: g["lr"] for g in parameter_groups(model, explicit, True)}["backbone"] == 0.01


def test_settings_that_train_nothing_are_refused_with_the_way_out():
    with pytest.raises(TunerError, match="trainable='head'"):
        TrainConfig(trainable="layer4", backbone_lr_mult=0).validate()
    with pytest.raises(TunerError, match="learning rate"):
        TrainConfig(lr=0).validate()
    with pytest.raises(TunerError, match="head_epochs"):
        TrainConfig(trainable="layer4", head_epochs=5, epochs=5).validate()
    with pytest.raises(TunerError, match="head-only already"):
        TrainConfig(trainable="head", head_epochs=1).validate()


@pytest.mark.parametrize("changes, message", [
    (dict(lr=float("inf")), "lr=inf must be a finite number or None (the default)."),
    (dict(weight_decay=float("nan")), "weight_decay=nan must be a finite number."),
    (dict(trainable="layer4", backbone_lr_mult=float("inf")), "backbone_lr_mult=inf must be a finite number"),
    (dict(epochs="2"), "epochs='2' must be a whole number."),
    (dict(image_size=32.5), "image_size=32.5 must be a whole number."),
    (dict(compile=1), "compile=1 must be true or false."),
    (dict(augment={"preset": "none"}), "must be an AugmentConfig (e.g. AugmentConfig.from_preset('light'))"),
    (dict(augment=AugmentConfig(rotation=float("nan"))), "rotation=nan must be a finite number."),
])
def test_values_of_the_wrong_kind_or_not_finite_are_refused_by_name(changes, message):
    # inf and nan pass every range check (nan compares false to everything), and a run with them trains
    # to NaN and saves it; the Python API has no argparse to turn "2" into 2.
    with pytest.raises(TunerError) as err:
        TrainConfig(**changes).validate()
    assert message in str(err.value)
    TrainConfig(lr=1, weight_decay=0, backbone_lr_mult=None).validate()  # an int where a float is asked is fine


def test_calibration_gives_random_batchnorm_real_statistics():
    torch.manual_seed(0)
    model = new_resnet50(2)
    x = torch.randn(8, 3, 32, 32) * 3 + 1
    calibrate_batchnorm(model, [x[:4], x[4:]])
    assert model.bn1.running_mean.abs().sum() > 0
    assert model.bn1.momentum == 0.1  # restored after the cumulative pass
    model.eval()
    with torch.no_grad():
        features = model.avgpool(model.layer4(model.layer3(model.layer2(model.layer1(
            model.maxpool(model.relu(model.bn1(model.conv1(x)))))))))
    assert features.abs().mean() < 10  # well-scaled, unlike an uncalibrated random backbone


def test_parameter_table_lists_every_named_parameter(model):
    table = parameter_table(model, "layer4")
    names = [n for n, _ in model.named_parameters()]
    assert list(table.name) == names
    assert table.numel.sum() == sum(STAGE_PARAMS.values())
    row = table.set_index("name").loc["layer4.0.conv1.weight"]
    assert row["shape"] == "512x1024x1x1" and row.stage == "layer4" and bool(row.trainable)
    assert not table.set_index("name").loc["layer3.0.conv1.weight"].trainable


def test_layer_tree_and_output_shapes(model):
    tree = layer_tree(model, max_depth=2).set_index("name")
    assert tree.loc["layer4", "params"] == STAGE_PARAMS["layer4"]
    assert tree.loc["layer4.0", "type"] == "Bottleneck"
    assert "layer4: Sequential  (14,964,736 params)" in layer_tree_text(model)
    shapes = stage_output_shapes(model, 224).set_index("module").output_shape
    assert shapes["layer1"] == "1x256x56x56" and shapes["layer4"] == "1x2048x7x7"
    assert shapes["fc"] == f"1x{NUM_CLASSES}"
    assert stage_output_shapes(model, 100).set_index("module").output_shape["layer4"] == "1x2048x4x4"
