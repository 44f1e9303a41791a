"""The embedded offline corpus as a TFDS dataset, ``tfds:tljax_corpus:train`` / ``:eval``.

It exercises the same TFDS path as any catalogue dataset (``tfds.data_source`` over array_record files,
no TensorFlow) on data this machine has, and shows how to wrap a local corpus for TFDS-based tooling.
Prepared on first use from ``tljax data prepare``'s output into ``$TFDS_DATA_DIR`` (default
``~/tensorflow_datasets``).
"""
from __future__ import annotations

import json

import tensorflow_datasets as tfds

from tljax.data import prepared


class TljaxCorpus(tfds.core.GeneratorBasedBuilder):
    """Documents of the embedded offline corpus: ``{"text": str, "source": str}``."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self, description="tljax's embedded offline English corpus (see docs/data.md).",
            features=tfds.features.FeaturesDict({"text": tfds.features.Text(), "source": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
        paths = prepared.corpus_paths()
        return {"train": self._generate_examples(paths["train"]), "eval": self._generate_examples(paths["eval"])}

    def _generate_examples(self, path):
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f):
                record = json.loads(line)
                yield i, {"text": record["text"], "source": record.get("source", "")}
