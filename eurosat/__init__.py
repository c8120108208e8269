"""Communication-efficient federated learning on EuroSAT."""

import logging


def enable_logging(level: int = logging.INFO) -> None:
    """Show this package's progress lines (round summaries, bytes on the wire) on stderr."""
    logger = logging.getLogger("eurosat")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(level)
