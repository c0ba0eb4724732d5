"""The harness: model zoo, data, baseline training, pruning protocol, grid runner, leaderboards."""
__version__ = "0.1.0"
