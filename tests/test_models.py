"""The model registry: loading, layer discovery, truncated forward, clear errors."""

import pytest
import torch
from torch import nn

from atlas.models import LOGITS, ModelError, UnknownLayerError, load_model


def test_tiny_cnn_is_seeded_and_layers_have_shapes():
    a, b = load_model("tiny-cnn"), load_model("tiny-cnn")
    assert a.digest == b.digest
    layers = {info.name: info for info in a.layers()}
    assert (layers["conv2"].channels, layers["conv2"].height, layers["conv2"].width) == (32, 16, 16)
    assert a.channels("conv3") == 32 and a.channels(LOGITS) == 10


def test_forward_stops_after_the_deepest_requested_layer():
    model = load_model("tiny-cnn")
    ran = []
    handle = model.module.conv3.register_forward_hook(lambda *_: ran.append("conv3"))
    try:
        out = model.activations(torch.rand(2, 3, 64, 64), ["conv1", "relu2"])
    finally:
        handle.remove()
    assert set(out) == {"conv1", "relu2"} and ran == []  # nothing after relu2 was computed
    full = model.activations(torch.rand(2, 3, 64, 64), [LOGITS, "conv3"])
    assert full[LOGITS].shape == (2, 10) and full["conv3"].shape == (2, 32, 8, 8)


def test_activations_match_a_plain_forward():
    model = load_model("tiny-cnn")
    x = torch.rand(1, 3, 64, 64)
    expected = model.module[:3](model.normalize(x))
    assert torch.allclose(model.activations(x, ["conv2"])["conv2"], expected)


def test_unknown_layer_lists_close_matches():
    with pytest.raises(UnknownLayerError, match=r"no layer 'conv_3'.*conv3"):
        load_model("tiny-cnn").resolve_layer("conv_3")


def test_efficientnet_lite0_loads_packaged_imagenet_weights():
    model = load_model("efficientnet-lite0")
    assert model.input_size == 224
    names = [info.name for info in model.layers()]
    assert "_blocks.5" in names and model.channels("_blocks.5") == 80
    assert model.digest != load_model("efficientnet-lite0", weights="none").digest


def test_user_module_with_checkpoint(tmp_path, monkeypatch):
    module_file = tmp_path / "mynet.py"
    module_file.write_text(
        "from torch import nn\n"
        "def build():\n"
        "    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())\n"
        "    net.input_size = 32\n"
        "    return net\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    reference = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    torch.save(reference.state_dict(), tmp_path / "w.pt")
    model = load_model("module:mynet:build", checkpoint=tmp_path / "w.pt")
    assert model.input_size == 32
    assert torch.equal(model.module[0].weight, reference[0].weight)
    with pytest.raises(ModelError, match="does not exist"):
        load_model("module:mynet:build", checkpoint=tmp_path / "missing.pt")
    with pytest.raises(ModelError, match="cannot import"):
        load_model("module:mynet:absent")


def test_torchvision_without_weights_and_unknown_names():
    model = load_model("torchvision:googlenet", weights="none")
    assert model.channels("inception4a") == 512
    with pytest.raises(ModelError, match="googlenet"):
        load_model("torchvision:googlenett", weights="none")
    with pytest.raises(ModelError, match="unknown model"):
        load_model("resnet50")


def test_autograd_still_works_after_an_inference_mode_pass():
    model = load_model("tiny-cnn")
    with torch.inference_mode():
        model.activations(torch.rand(1, 3, 64, 64), ["conv1"])
    x = torch.rand(1, 3, 64, 64, requires_grad=True)
    model.activations(x, ["conv1"])["conv1"].mean().backward()
    assert x.grad is not None


def test_logit_count_of_a_model_that_needs_its_input_size():
    assert load_model("efficientnet-lite0", weights="none").channels(LOGITS) == 1000


@pytest.mark.parametrize("trace", [True, False])
def test_the_first_call_of_an_unprobed_untraceable_model_takes_activations_by_hooks(trace: bool) -> None:
    """A ViT cannot be traced, so activations come by hooks; the layer probe those hooks need ran
    into them and recursed until Python's limit when it was the model's first call."""
    import torchvision

    from atlas.models import LoadedModel, Preprocessing

    torch.manual_seed(0)
    module = torchvision.models.VisionTransformer(
        image_size=16, patch_size=4, num_layers=1, num_heads=2, hidden_dim=8, mlp_dim=16, num_classes=2
    ).eval()
    model = LoadedModel("vit", module, Preprocessing(16, mean=(0.5,) * 3, std=(0.25,) * 3, fixed_size=True))
    model.trace = trace
    layer = "encoder.layers.encoder_layer_0.mlp.1"
    with torch.no_grad():
        acts = model.activations(torch.rand(2, 3, 16, 16), [layer])[layer]
    assert acts.shape == (2, 16, 4, 4)
