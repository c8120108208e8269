import torch

from eurosat.train.model import NUM_PARAMETERS, FoldedNet, Net, count_parameters, for_inference
from eurosat.train.checkpoints import load_state_dict
from eurosat.data.loading import load_split, resolve_source
from eurosat.train.loop import evaluate


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


def _trained_looking_net(seed: int = 0) -> Net:
    """A `Net` whose batch norms hold non-trivial statistics and affine parameters, as after training."""
    torch.manual_seed(seed)
    net = Net()
    for bn in (net.bn1, net.bn2, net.bn3):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.2, 3.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.3, 0.3)
    return net.eval()


def test_folded_net_computes_the_same_logits():
    net = _trained_looking_net()
    x = torch.rand(16, 3, 64, 64)
    with torch.no_grad():
        expected = net(x)
        folded = FoldedNet(net)
        assert torch.allclose(folded(x), expected, atol=1e-4, rtol=1e-4)
        assert torch.allclose(folded(x.contiguous(memory_format=torch.channels_last)), expected, atol=1e-4, rtol=1e-4)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())


def test_only_float32_nets_in_eval_mode_are_folded():
    assert isinstance(for_inference(Net().eval()), FoldedNet)
    training = Net().train()
    assert for_inference(training) is training  # batch statistics: nothing to fold
    half = Net().half().eval()
    assert for_inference(half) is half  # folding would change float16 arithmetic

    class Subclass(Net):  # e.g. the quantizable and QAT nets: their own forward
        pass

    sub = Subclass().eval()
    assert for_inference(sub) is sub


def test_evaluation_folded_or_not_gives_the_same_predictions(small_data):
    test = load_split(resolve_source(str(small_data)), "test")
    net = _trained_looking_net(1)
    folded, plain = evaluate(net, test, 64), evaluate(net, test, 64, fold=False)
    assert (folded["correct"] == plain["correct"]).all()
    assert folded["confusion_matrix"] == plain["confusion_matrix"]
    assert abs(folded["loss"] - plain["loss"]) < 1e-4
    assert net.bn1.running_var.min() >= 0.2, "the evaluated Net itself is unchanged"


def test_relu_after_pooling_trains_exactly_as_the_original_order():
    """`Net.forward` pools before ReLU; the original code did ReLU first. Same outputs, same gradients."""
    import torch.nn.functional as F

    def original(net: Net, x: torch.Tensor) -> torch.Tensor:
        for conv, bn in ((net.conv1, net.bn1), (net.conv2, net.bn2), (net.conv3, net.bn3)):
            x = net.pool(F.relu(bn(conv(x))))
        x = F.relu(net.fc1(torch.flatten(x, 1)))
        return net.fc3(F.relu(net.fc2(x)))

    torch.manual_seed(0)
    net = Net().train()
    x, y = torch.randn(8, 3, 64, 64), torch.randint(0, 10, (8,))
    grads = []
    for forward in (net, lambda x: original(net, x)):
        net.zero_grad()
        logits = forward(x)
        F.cross_entropy(logits, y).backward()
        grads.append([logits.detach()] + [p.grad.clone() for p in net.parameters()])
    for a, b in zip(*grads):
        assert torch.equal(a, b)
