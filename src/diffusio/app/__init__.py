"""The product: command line, config registries and bundled configs, demo, evaluation, plotting."""
