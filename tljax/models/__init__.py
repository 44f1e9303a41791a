"""Model definitions: configs and Flax modules."""
from tljax.models.layers import TransformerConfig
from tljax.models.transformer import LanguageModel, SequenceClassifier, Transformer, pool_hidden


def model_config(cfg_model) -> TransformerConfig:
    """Build a TransformerConfig from the ``config.model`` ConfigDict (unknown keys are an error)."""
    fields = dict(cfg_model)
    known = set(TransformerConfig.__dataclass_fields__)
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"unknown model field(s) {unknown}; valid fields: {sorted(known)}")
    return TransformerConfig(**fields)


__all__ = ["TransformerConfig", "LanguageModel", "SequenceClassifier", "Transformer", "model_config", "pool_hidden"]
