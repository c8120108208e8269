"""ClientApp: decode the global model, train on this node's partition, send back an encoded delta."""

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from eurosat import task
from eurosat.config import RunConfig
from eurosat.link import ClientLink
from eurosat.transport import get_codec

app = ClientApp()


def _setup(msg: Message, context: Context):
    config = {k: v for k, v in msg.content["config"].items() if k != "server-round"}
    cfg = RunConfig.from_mapping(config, environ={})  # the server already applied the environment
    link = ClientLink(get_codec(cfg.transport), context.state, cfg.transport_error_feedback)
    node = context.node_config
    return cfg, link, link.decode(msg.content), int(node["partition-id"]), int(node["num-partitions"])


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg, link, received, pid, n = _setup(msg, context)
    delta, metrics = task.client_update(cfg, received, pid, n, int(msg.content["config"]["server-round"]))
    numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    info = {k: v for k, v in metrics.items() if isinstance(v, str)}  # e.g. the dtype that really ran
    content = RecordDict({"arrays": link.encode(delta), "metrics": MetricRecord(numbers), "info": ConfigRecord(info)})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    cfg, _, received, pid, n = _setup(msg, context)
    metrics = task.client_evaluate(cfg, received, pid, n)
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
