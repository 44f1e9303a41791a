"""SmolLM2-135M-Instruct perplexity on held-out text: tljax (GGUF imported by tljax) vs transformers'
PyTorch LlamaForCausalLM built from the same dequantized weights (tljax's import exported as a Hugging Face
folder), and, as a second independent reference, the PyTorch model transformers itself builds from the GGUF
file (``from_pretrained(..., gguf_file=...)``: its own dequantization and q/k un-permutation).

The text is the embedded corpus's eval split (``builtin:corpus_eval``, never used for training here),
documents joined by blank lines, tokenized once by tljax's tokenizer rebuilt from the GGUF metadata (its ids
are checked against the tokenizer transformers builds from the same file), cut into windows of
``--seq-len`` tokens; every framework scores the same windows (each predicts positions 1 … T-1).

    PYTHONPATH=. python scripts/smollm2_perplexity.py [--tokens 20480] [--seq-len 512] [--out result.json]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def held_out_ids(tokenizer, tokens: int, seq_len: int) -> np.ndarray:
    """[tokens // seq_len, seq_len] int32 token windows of the corpus's eval text."""
    from tljax.data import sources
    pieces, have = [], 0
    for doc in sources.iter_documents("builtin:corpus_eval"):
        ids = tokenizer(doc + "\n\n", add_special_tokens=False)["input_ids"]
        pieces.append(ids)
        have += len(ids)
        if have >= tokens:
            break
    stream = np.concatenate(pieces)[:tokens]
    if len(stream) < seq_len:
        raise SystemExit(f"the eval text has only {len(stream)} tokens; lower --seq-len")
    n = len(stream) // seq_len
    return stream[: n * seq_len].reshape(n, seq_len).astype(np.int32)


def tljax_nll(pre, windows: np.ndarray, batch: int) -> tuple[float, int]:
    import jax
    import jax.numpy as jnp
    from tljax.models import LanguageModel
    model = LanguageModel(pre.model)
    params = jax.device_put(pre.params)

    @jax.jit
    def nll(params, ids):
        logits = model.apply({"params": params}, ids)[:, :-1]
        logp = jax.nn.log_softmax(logits, axis=-1)
        return -jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1).sum()

    total = 0.0
    for lo in range(0, len(windows), batch):
        total += float(nll(params, jnp.asarray(windows[lo: lo + batch])))
    return total, windows.shape[0] * (windows.shape[1] - 1)


def torch_nll(model, windows: np.ndarray, batch: int) -> tuple[float, int]:
    import torch
    total = 0.0
    with torch.no_grad():
        for lo in range(0, len(windows), batch):
            ids = torch.tensor(windows[lo: lo + batch], dtype=torch.long)
            logits = model(input_ids=ids).logits[:, :-1].float()
            total += float(torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum"))
    return total, windows.shape[0] * (windows.shape[1] - 1)


def measure(tokens: int = 20480, seq_len: int = 512, batch: int = 4, transformers_gguf: bool = True) -> dict:
    """Perplexities and timings (see the module docstring). Returns a dict of numbers."""
    import torch
    import transformers
    from tljax import gguf_import, hf
    torch.set_num_threads(os.cpu_count() or 1)
    result = {"tokens": tokens, "seq_len": seq_len}
    t0 = time.time()
    pre = gguf_import.load_gguf("smollm2")
    result["tljax_load_seconds"] = time.time() - t0
    gguf_path = Path(pre.config["gguf"]["file"])
    windows = held_out_ids(pre.tokenizer, tokens, seq_len)
    result["scored_tokens"] = int(windows.shape[0] * (seq_len - 1))

    # The tokenizer check on the same text: ids of transformers' tokenizer built from the GGUF.
    reference_tok = transformers.AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    text = pre.tokenizer.decode(windows.reshape(-1))
    ours, theirs = pre.tokenizer(text, add_special_tokens=False)["input_ids"], reference_tok(
        text, add_special_tokens=False)["input_ids"]
    result["tokenizer_ids_equal"] = ours == theirs
    result["tokenizer_text_tokens"] = len(ours)

    t0 = time.time()
    total, count = tljax_nll(pre, windows, batch)
    result["tljax_perplexity"] = math.exp(total / count)
    result["tljax_seconds"] = time.time() - t0

    with tempfile.TemporaryDirectory(prefix="smollm2-hf-") as folder:
        hf.export_hf(pre, Path(folder) / "hf")
        exported = transformers.LlamaForCausalLM.from_pretrained(str(Path(folder) / "hf")).eval()
        t0 = time.time()
        total, count = torch_nll(exported, windows, batch)
        result["torch_exported_perplexity"] = math.exp(total / count)
        result["torch_seconds"] = time.time() - t0
        del exported
    if transformers_gguf:
        direct = transformers.LlamaForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, torch_dtype=torch.float32).eval()
        total, count = torch_nll(direct, windows, batch)
        result["torch_transformers_gguf_perplexity"] = math.exp(total / count)
    for key in ("torch_exported_perplexity", "torch_transformers_gguf_perplexity"):
        if key in result:
            result[key.replace("perplexity", "relative_difference")] = (
                abs(result["tljax_perplexity"] - result[key]) / result[key])
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=20480)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--no-transformers-gguf", action="store_true",
                        help="skip the reference transformers builds from the GGUF file itself")
    parser.add_argument("--out", default="", help="also write the result here as JSON")
    args = parser.parse_args(argv)
    result = measure(args.tokens, args.seq_len, args.batch, not args.no_transformers_gguf)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        from tljax.utils import write_json
        write_json(args.out, result)
    ok = result["tokenizer_ids_equal"] and result["torch_exported_relative_difference"] < 0.01
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
