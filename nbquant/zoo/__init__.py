"""Pretrained models nbquant can build itself, from pip-installed weights, without torch."""
