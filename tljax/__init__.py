"""tljax: pretraining and transfer learning for language models in JAX/Flax."""


def from_pretrained(path):
    """Load a checkpoint to run: ``hf:/path/to/folder`` (a Hugging Face BERT, GPT-2 or Llama), ``hf:minilm``,
    ``hf:smollm2``, ``gguf:/path/model.gguf``, or a tljax run (workdir, its checkpoints/ folder or one step).
    Returns a callable model::

        model = tljax.from_pretrained("hf:minilm")
        out = model(input_ids, attention_mask=mask, token_type_ids=types)  # int arrays [B, T]
        out.last_hidden_state   # [B, T, H], final layer (GPT / Llama: after the final norm)
        out.logits              # [B, T, V] when the checkpoint has an LM head, else None
        model.tokenizer         # its Hugging Face tokenizer; model.config, model.params
    """
    from tljax.init_from import from_pretrained as _load  # lazy: `import tljax` stays light
    return _load(path)


def load_classifier(path):
    """Load the classifier a ``tljax finetune`` run saved (its workdir, or the ``model/`` folder in it)::

        clf = tljax.load_classifier("runs/rt")
        clf.predict(["great film", "dull and long"])   # -> ["fresh", "rotten"]: label names
        clf.predict_proba(texts)                       # -> float64 [N, C], columns in clf.label_names order
    """
    from tljax.classifier import load_classifier as _load  # lazy: `import tljax` stays light
    return _load(path)


__all__ = ["from_pretrained", "load_classifier"]
