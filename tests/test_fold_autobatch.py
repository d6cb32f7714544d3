"""BatchNorm folding at load time, and the physical batch chosen from (fake) free GPU memory."""

from __future__ import annotations

import torch
from torch import nn

from atlas.models import freeze, load_model
from atlas.models.registry import Preprocessing
from atlas.optvis.autobatch import DEFAULT_CAP, HEADROOM, capacity_from_memory, pass_capacity
from atlas.plan.spec import parse_spec
from atlas.plan.units import ModelFacts, make_plan


class ConvBnNet(nn.Module):
    """conv -> bn -> relu twice, a depthwise conv without bias, and a BN-free conv."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.dw(x)))
        return self.head(x).mean(dim=(2, 3))


def _trained_statistics(net: nn.Module) -> nn.Module:
    """Non-trivial running statistics and affine parameters, as a trained model has."""
    torch.manual_seed(1)
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(4, 3, 16, 16) * 2 + 0.5)
        for bn in (net.bn1, net.bn2):
            bn.weight.uniform_(0.5, 2.0)
            bn.bias.uniform_(-1.0, 1.0)
    return net


def test_folding_keeps_outputs_layers_and_digest():
    torch.manual_seed(0)
    net = _trained_statistics(ConvBnNet())
    prep = Preprocessing(input_size=16)
    plain = freeze("net", net, prep, fold=False)
    torch.manual_seed(0)
    twin = _trained_statistics(ConvBnNet())
    folded = freeze("net", twin, prep)
    assert set(folded.folded.affine) == {"conv1", "dw"}
    assert isinstance(folded.module.bn1, nn.Identity) and not isinstance(plain.module.bn1, nn.Identity)
    assert folded.digest == plain.digest  # content keys hash the weights as loaded
    assert [i.name for i in folded.layers()] == [i.name for i in plain.layers()]
    x = torch.rand(3, 3, 16, 16)
    names = ["conv1", "bn1", "dw", "bn2", "head", "logits"]
    with torch.no_grad():
        expected, got = plain.activations(x, names), folded.activations(x, names)
    for name in names:  # a folded conv still reads as the unfolded conv's output
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-5)


def test_folding_changes_no_content_key():
    spec = parse_spec('[model]\nname = "tiny-cnn"\n[[layers]]\nname = "conv2"\nchannels = "0:4"\n')
    keys = []
    for fold in (False, True):
        model = load_model("tiny-cnn", fold=fold)
        facts = ModelFacts(model.digest, {"conv2": model.channels("conv2")})
        keys.append([u.key for u in make_plan(spec, facts, [], []).units])
    assert keys[0] == keys[1] and keys[0]


def test_efficientnet_folds_every_batchnorm_and_matches():
    plain = load_model("efficientnet-lite0", fold=False)
    folded = load_model("efficientnet-lite0")
    assert len(folded.folded.affine) == 49 and plain.digest == folded.digest
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        a, b = (
            plain.activations(x, ["_blocks.9"])["_blocks.9"],
            folded.activations(x, ["_blocks.9"])["_blocks.9"],
        )
    assert (a - b).abs().max() <= 1e-4 * a.abs().max()


def test_a_network_that_reuses_the_raw_conv_output_is_left_unfolded():
    class Reuse(ConvBnNet):
        def forward(self, x):
            raw = self.conv1(x)
            return (self.bn1(raw) + raw).mean(dim=(1, 2, 3))[:, None]

    net = _trained_statistics(Reuse())
    loaded = freeze("reuse", net, Preprocessing(input_size=16))
    assert loaded.folded.affine == {} and isinstance(loaded.module.bn1, nn.BatchNorm2d)


def test_capacity_from_fake_free_memory():
    per_image = 50e6  # bytes per image
    free = 80e9
    assert capacity_from_memory(int(free), per_image, 8) == min(
        DEFAULT_CAP, int(free * HEADROOM // per_image)
    )
    assert capacity_from_memory(int(free), per_image, 8, cap=64) == 64
    assert capacity_from_memory(10**8, per_image, 8) == 8  # never below one logical chunk
    assert capacity_from_memory(int(4e9), per_image, 8) == int(4e9 * HEADROOM // per_image)


def test_cpu_keeps_the_spec_batch():
    model = load_model("tiny-cnn")
    assert pass_capacity(model, 8, 32, free_bytes=10**12) == 8
