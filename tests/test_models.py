"""The model zoo: registry, glob listing, errors, lazily registered torchvision models, shapes."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from prunetax.benchmarks.models import create_model, list_models, model_info, register_model, unregister_model
from prunetax.taxonomy.errors import PrunetaxError

CIFAR = ["lenet5", "cifar10_quick", "nin", "alexnet_cifar", "resnet20", "resnet56", "resnet20_a",
         "resnet56_a", "vgg16_bn", "mobilenetv2", "densenet40"]
TORCHVISION = ["tv_resnet18", "tv_resnet50", "tv_mobilenet_v2", "tv_densenet121", "tv_vgg16_bn"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _torchvision_imports() -> bool:
    try:
        import torchvision  # noqa: F401
    except Exception:
        return False
    return True


def test_every_model_is_listed_with_a_description():
    names = list_models()
    assert set(CIFAR + TORCHVISION) <= set(names) and names == sorted(names)
    assert all(model_info(n).description for n in names)
    assert all(model_info(n).available for n in CIFAR)


def test_the_torch_free_names_are_the_zoo_and_follow_registrations():
    """prunetax.benchmarks.names (what a command checks a name against before importing torch)
    lists exactly the zoo that models.py registers, and every registration since."""
    import subprocess
    import sys

    from prunetax.benchmarks import names

    assert sorted(names.ZOO_MODELS) == sorted(CIFAR + TORCHVISION)
    fresh = subprocess.run([sys.executable, "-c", "from prunetax.benchmarks import models, names; "
                            "print(models.list_models() == names.model_names() == sorted(names.ZOO_MODELS))"],
                           capture_output=True, text=True, timeout=120)
    assert fresh.stdout.strip() == "True", fresh.stderr
    register_model(lambda in_channels, num_classes, input_size: nn.Identity(), name="_test_named")
    try:
        names.check_model("_test_named")
        assert "_test_named" in names.model_names()
    finally:
        unregister_model("_test_named")
    with pytest.raises(PrunetaxError, match="unknown model '_test_named'"):
        names.check_model("_test_named")
    assert names.model_names() == list_models()


def test_glob_patterns():
    assert list_models("resnet*") == ["resnet20", "resnet20_a", "resnet56", "resnet56_a"]
    assert list_models("*_a") == ["resnet20_a", "resnet56_a"]
    assert list_models("tv_*") == sorted(TORCHVISION)
    assert list_models("nothing*") == []


def test_unknown_model_names_close_matches():
    with pytest.raises(PrunetaxError, match="unknown model 'resnet2'.*resnet20") as e:
        create_model("resnet2")
    assert "\n" not in str(e.value)
    with pytest.raises(PrunetaxError, match="choose one of"):
        model_info("zzzzzzzz")


def test_torchvision_models_are_listed_even_when_unavailable():
    if _torchvision_imports():
        assert all(model_info(n).available for n in TORCHVISION)
        return
    for name in TORCHVISION:
        info = model_info(name)
        assert not info.available and "torchvision" in info.reason
        with pytest.raises(PrunetaxError, match=f"'{name}' is unavailable: needs torchvision"):
            create_model(name)
    assert not set(TORCHVISION) & set(list_models(available_only=True))


@pytest.mark.parametrize("name", CIFAR)
def test_forward_shapes_and_traceable(name):
    channels, size = (1, 28) if name == "lenet5" else (3, 32)  # lenet5 as on MNIST
    model = create_model(name, in_channels=channels, num_classes=7, input_size=size).eval()
    x = torch.randn(2, channels, size, size)
    with torch.no_grad():
        assert model(x).shape == (2, 7)
        traced = torch.fx.symbolic_trace(model)
        torch.testing.assert_close(traced(x), model(x))


def test_cifar10_quick_pools_like_caffe():
    model = create_model("cifar10_quick")
    sizes, x = [], torch.zeros(1, 3, 32, 32)
    for m in model:
        x = m(x)
        if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
            sizes.append(x.shape[-1])
    assert sizes == [16, 8, 4]  # ceil mode, as Caffe rounds up


def test_bad_sizes_and_registration():
    with pytest.raises(PrunetaxError, match="input_size"):
        create_model("vgg16_bn", input_size=16)
    with pytest.raises(PrunetaxError, match="positive"):
        create_model("lenet5", num_classes=0)

    @register_model(name="_test_tiny")
    def tiny(in_channels=3, num_classes=10, input_size=32):
        """A one-layer test model."""
        return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * input_size ** 2, num_classes))

    try:
        assert "_test_tiny" in list_models("_test*")
        assert create_model("_test_tiny", in_channels=1, num_classes=2, input_size=4)(torch.zeros(1, 1, 4, 4)).shape == (1, 2)
        with pytest.raises(PrunetaxError, match="already registered"):
            register_model(tiny, name="_test_tiny")
    finally:
        unregister_model("_test_tiny")
    assert "_test_tiny" not in list_models()
    with pytest.raises(PrunetaxError, match="not registered"):
        unregister_model("_test_tiny")


def test_zoo_models_declare_their_recipes():
    """Every zoo model declares its training recipe where it is registered (read-only)."""
    for name in CIFAR + TORCHVISION:
        recipe = model_info(name).recipe
        assert recipe is not None and recipe["epochs"] >= 1 and recipe["lr"] > 0
        with pytest.raises(TypeError):
            recipe["lr"] = 1.0
    assert dict(model_info("mobilenetv2").recipe) == {"epochs": 60, "lr": 0.1, "weight_decay": 4e-5}
    assert dict(model_info("alexnet_cifar").recipe) == {"epochs": 40, "lr": 5e-4}


@pytest.mark.parametrize("recipe,match", [
    ({"lr": 0.1, "bogus": 1}, "unknown recipe field.*bogus"),
    ({"epochs": 0}, "epochs must be a positive integer"),
    ({"schedule": "step"}, "unknown schedule"),
    ([("lr", 0.1)], "dict of Recipe fields"),
])
def test_bad_recipe_at_registration(recipe, match):
    with pytest.raises(PrunetaxError, match=f"model '_test_bad_recipe'.*{match}"):
        register_model(lambda in_channels, num_classes, input_size: nn.Identity(), name="_test_bad_recipe",
                       recipe=recipe)
    assert "_test_bad_recipe" not in list_models()


def test_deep_networks_without_batchnorm_keep_the_signal_at_init():
    """He init (docs/data.md): under PyTorch's default the logits of NIN (std across images 1e-5)
    and AlexNet (5e-4) hardly depended on the image, and NIN's class maps were half off."""
    torch.manual_seed(0)
    x = torch.randn(32, 1, 32, 32)
    nin = create_model("nin", in_channels=1).eval()
    alexnet = create_model("alexnet_cifar", in_channels=1).eval()
    with torch.no_grad():
        class_maps = nin[:-3](x)  # before the last ReLU and the global average
        assert (class_maps > 0).float().mean() > 0.8 and torch.equal(nin[-4].bias, torch.ones(10))
        assert nin(x).std(0).min() > 1e-3
        assert alexnet[:-1](x).std() > 0.1  # the classifier's input: He-scaled, not vanished
        assert alexnet(x).std(0).min() > 1e-3
        assert 0.0005 < alexnet[-1].weight.std() < 0.002  # the classifier starts near zero
