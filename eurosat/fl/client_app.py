"""ClientApp: decode the global model, train on this node's partition, send back an encoded delta.

Any failure is answered with a one-line root cause (protocol.failure_reply), which the server
records against this node's round; the traceback stays in this process's log.
"""

import logging

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp

from eurosat.fl import hooks, task
from eurosat.fl.config import RunConfig
from eurosat.fl.link import ClientLink
from eurosat.fl.memory import load_optimizer_state, save_optimizer_state
from eurosat.fl.protocol import ARRAYS, CONFIG, Instruction, failure_reply, roll_call_reply

app = ClientApp()
log = logging.getLogger("eurosat.client")


def _setup(msg: Message, context: Context):
    instruction, values = Instruction.split(msg.content[CONFIG])
    cfg = RunConfig.from_mapping(values, environ={})  # the server already applied the environment
    down, up = cfg.link_plan().at(instruction.server_round)  # this round's codecs (a warm-up's are int8)
    link = ClientLink(down, context.state, cfg.transport_error_feedback, up=up, initial=lambda: task.initial_state(cfg))
    node = context.node_config
    return cfg, instruction, link, link.decode(msg.content), int(node["partition-id"]), int(node["num-partitions"])


@app.train()
def train(msg: Message, context: Context) -> Message:
    try:
        cfg, instruction, link, received, pid, n = _setup(msg, context)
        kept = load_optimizer_state(context.state) if cfg.local_optimizer_state == "keep" else None
        misbehave = hooks.parse_hooks(cfg.test_hook)
        delta, report = task.client_update(cfg, received, pid, n, instruction, kept, hooks.step_delay(misbehave, pid),
                                           correction=link.control(msg.content))
        delta, report = hooks.apply(misbehave, pid, delta, report, task.local_seed(cfg.seed, instruction.server_round, pid))
        if kept is not None:
            save_optimizer_state(context.state, kept)
        return Message(RecordDict({ARRAYS: link.encode(delta), **report.to_records()}), reply_to=msg)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a recorded, named reply
        log.exception("train failed on partition %s", context.node_config.get("partition-id"))
        return failure_reply(msg, context.node_config.get("partition-id"), exc)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    try:
        cfg, _, _, received, pid, n = _setup(msg, context)
        return Message(RecordDict(task.client_evaluate(cfg, received, pid, n).to_records()), reply_to=msg)
    except Exception as exc:  # noqa: BLE001
        log.exception("evaluate failed on partition %s", context.node_config.get("partition-id"))
        return failure_reply(msg, context.node_config.get("partition-id"), exc)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """The server's roll call before it samples part of the federation: this node's partition."""
    return roll_call_reply(msg, int(context.node_config["partition-id"]))
