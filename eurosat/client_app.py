"""ClientApp: decode the global model, train on this node's partition, send back an encoded delta."""

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from eurosat import task
from eurosat.config import RunConfig
from eurosat.transport import get_codec

app = ClientApp()
RESIDUAL = "transport-residual"


def _setup(msg: Message, context: Context):
    config = {k: v for k, v in msg.content["config"].items() if k != "server-round"}
    cfg = RunConfig.from_mapping(config, environ={})  # the server already applied the environment
    codec = get_codec(cfg.transport)
    node = context.node_config
    return cfg, codec, codec.decode(msg.content["arrays"]), int(node["partition-id"]), int(node["num-partitions"])


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg, codec, received, pid, n = _setup(msg, context)
    residual = context.state.array_records.get(RESIDUAL)
    residual = {k: v.numpy() for k, v in residual.items()} if residual else None
    delta, new_residual, metrics = task.client_update(cfg, received, pid, n, codec, residual)
    if new_residual is not None:
        context.state[RESIDUAL] = ArrayRecord({k: Array(v) for k, v in new_residual.items()})
    numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    info = {k: v for k, v in metrics.items() if isinstance(v, str)}  # e.g. the dtype that really ran
    content = RecordDict({"arrays": codec.encode(delta), "metrics": MetricRecord(numbers), "info": ConfigRecord(info)})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    cfg, _, received, pid, n = _setup(msg, context)
    metrics = task.client_evaluate(cfg, received, pid, n)
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
