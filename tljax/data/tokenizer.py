"""Tokenizers: train a WordPiece (BERT) or byte-level BPE (GPT) tokenizer with the ``tokenizers``
library, or load any Hugging Face tokenizer folder. Saved in Hugging Face format so that
``transformers.AutoTokenizer.from_pretrained(workdir / "tokenizer")`` loads it."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterable

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, BertTokenizerFast, GPT2TokenizerFast, PreTrainedTokenizerFast

BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
GPT_EOS = "<|endoftext|>"


def train_wordpiece(docs: Iterable[str], vocab_size: int, lowercase: bool = True) -> BertTokenizerFast:
    """A BERT WordPiece tokenizer trained on ``docs``; ids 0-4 are [PAD] [UNK] [CLS] [SEP] [MASK]."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=BERT_SPECIALS,
                                        show_progress=False)
    tok.train_from_iterator(docs, trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return BertTokenizerFast(tokenizer_object=tok, do_lower_case=lowercase, unk_token="[UNK]",
                             pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


def train_byte_bpe(docs: Iterable[str], vocab_size: int) -> GPT2TokenizerFast:
    """A GPT-2 style byte-level BPE tokenizer trained on ``docs``; id 0 is <|endoftext|> (also padding)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[GPT_EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(docs, trainer)
    return GPT2TokenizerFast(tokenizer_object=tok, bos_token=GPT_EOS, eos_token=GPT_EOS, unk_token=GPT_EOS,
                             pad_token=GPT_EOS)


def train_tokenizer(kind: str, docs: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """``kind``: "wordpiece" or "bpe"."""
    if kind == "wordpiece":
        return train_wordpiece(docs, vocab_size)
    if kind == "bpe":
        return train_byte_bpe(docs, vocab_size)
    raise ValueError(f"data.tokenizer.kind={kind!r} unknown; use 'wordpiece' (BERT) or 'bpe' (GPT)")


def load_tokenizer(path: str | os.PathLike) -> PreTrainedTokenizerFast:
    """Load a Hugging Face tokenizer folder (tokenizer.json or vocab files), offline."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer folder {path} does not exist; give a folder saved by "
                                f"save_pretrained (with tokenizer.json or vocab.txt)")
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerFast) -> str:
    return hashlib.sha1(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()[:16]


def special_ids(tokenizer: PreTrainedTokenizerFast) -> list[int]:
    return sorted(set(tokenizer.all_special_ids))
