"""effnet_jax: EfficientNet in Flax NNX, built from `effnet_spec`."""
