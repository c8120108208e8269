"""The Flower apps and their wire: ServerApp, ClientApp, strategy, codecs, link, protocol, run config and record."""
