"""The quantization registry: every method round-trips through its file, with one header."""

import pytest
import torch

from eurosat.common.files import save_torch
from eurosat.train.model import Net
from eurosat.quant.qat import QATConfig, prepare_qat
from eurosat.quant.registry import CONFIGS, FORMAT, Int8StaticConfig, PackedConfig, load, quantize, save


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    model = Net().train()
    with torch.no_grad():
        for _ in range(3):  # BatchNorm statistics that are not the identity
            model(torch.randn(16, 3, 64, 64))
    return model.eval()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_registered_method_round_trips_through_its_file(name, net, tmp_path):
    config = CONFIGS[name]
    calibration = [torch.randn(8, 3, 64, 64) for _ in range(2)]
    before = {k: v.clone() for k, v in net.state_dict().items()}
    qmodel = quantize(net, config, calibration)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items()), "quantize never changes its input"
    path = save(qmodel, config, tmp_path / f"{name}.pt")
    raw = torch.load(path, weights_only=True)  # plain values only
    assert raw["format"] == FORMAT and raw["method"] == name
    loaded, stored = load(path)
    assert stored == config
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        expected = qmodel.float()(x) if name == "fp16" else qmodel(x)
        got = loaded.float()(x) if name == "fp16" else loaded(x)
    assert torch.allclose(got, expected, atol=1e-5), name


def test_packed_method_is_the_qat_export(net, tmp_path):
    qat = prepare_qat(Net(), QATConfig(4, 8))
    qat.load_state_dict(net.state_dict(), strict=False)
    path = save(qat, PackedConfig(4, 8), tmp_path / "final_model_4bit.pt")
    model, config = load(path)
    assert config == PackedConfig(4, 8)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), qat.eval()(x), atol=1e-5)


def test_files_of_earlier_versions_still_load(net, tmp_path):
    from eurosat.quant import ptq
    from eurosat.quant.packed_model import LEGACY_FORMAT, packed_state

    int8 = quantize(net, Int8StaticConfig(), [torch.randn(8, 3, 64, 64)])
    old = {**ptq.int8_static_state(int8), "__precision__": torch.tensor(list(b"int8"), dtype=torch.uint8)}
    model, config = load(save_torch(tmp_path / "old_int8.pt", old))
    assert config == Int8StaticConfig()
    qat = prepare_qat(Net(), QATConfig(2, 32)).eval()
    legacy = {"format": LEGACY_FORMAT, "weight_bits": 2, "activation_bits": 32, **packed_state(qat)}
    _, config = load(save_torch(tmp_path / "old_packed.pt", legacy))
    assert config == PackedConfig(2, 32)
    plain, config = load(save_torch(tmp_path / "plain.pt", Net().state_dict()))
    assert config.name == "fp32" and isinstance(plain, Net)


def test_fp8_rounds_each_weight_to_its_nearest_e4m3_step(net):
    from eurosat.quant.registry import Fp8Config

    fp8 = quantize(net, Fp8Config())
    w, q = net.conv2.weight.detach(), fp8.conv2.weight.detach()
    scale = w.abs().flatten(1).amax(1).view(-1, 1, 1, 1) / 448
    assert torch.equal(q, (w / scale).to(torch.float8_e4m3fn).float() * scale)
    # e4m3: 3 mantissa bits (relative error <= 1/16), subnormal steps of 2^-9 near zero
    assert ((q - w).abs() <= w.abs() / 16 + scale * 2**-10 + 1e-12).all()
