"""Evaluate an encoder by label propagation: ``python evaluate.py --task davis --help``."""
from propagate.evaluate import EvalConfig, evaluate

from corr.cli import parse_config

if __name__ == "__main__":
    evaluate(parse_config(EvalConfig))
