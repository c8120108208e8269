import torch

from eurosat.model import NUM_PARAMETERS, Net, count_parameters
from eurosat.checkpoints import load_state_dict


def test_net_has_exactly_434602_parameters():
    assert count_parameters(Net()) == NUM_PARAMETERS == 434_602


def test_seed_format_state_dict_loads(tmp_path):
    """The original berlin25-eurosat code saved `torch.save(net.state_dict())`."""
    seed_net = Net()
    path = tmp_path / "final_model.pt"
    torch.save(seed_net.state_dict(), path)
    net = Net()
    net.load_state_dict(load_state_dict(path), strict=True)
    x = torch.randn(4, 3, 64, 64)
    assert torch.equal(net.eval()(x), seed_net.eval()(x))
    assert set(net.state_dict()) >= {"conv1.weight", "bn1.running_mean", "conv3.weight", "fc3.bias"}
