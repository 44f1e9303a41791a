"""tljax: pretraining and transfer learning for language models in JAX/Flax."""
