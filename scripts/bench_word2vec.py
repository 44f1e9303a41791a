"""tljax word2vec vs gensim Word2Vec: same corpus, same hyper-parameters, same machine, same evaluation.

    TLJAX_DATA_DIR=~/.cache/tljax python scripts/bench_word2vec.py                 # whole embedded corpus
    python scripts/bench_word2vec.py --fraction 0.25 --epochs 3                    # a quicker subset

The corpus (``--source``, default the embedded ``builtin:corpus``; ``--fraction`` keeps that share of
documents by a stable text hash) is tokenized once with ``tljax.word2vec.tokenize``; both trainers get
the same in-vocabulary token lists (gensim's in pieces of at most 10,000 tokens, since it truncates
longer sentences). Both models are evaluated by gensim's own ``evaluate_word_pairs`` (WordSim-353,
Spearman) and ``evaluate_word_analogies`` (Google analogies, accuracy over the questions whose words
are all among the ``--restrict-vocab`` most frequent words) on their KeyedVectors — the two
vocabularies are identical, so the question sets are too. words/s = in-vocabulary corpus words x
epochs / training seconds (vocabulary building excluded for both).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np


def gensim_test_file(name: str) -> str:
    import gensim
    return str(Path(gensim.__file__).parent / "test" / "test_data" / name)


def evaluate(kv, restrict_vocab: int) -> dict:
    """Spearman on WordSim-353 and accuracy on the Google analogies, by gensim's evaluators."""
    import logging
    logging.getLogger("gensim").setLevel(logging.ERROR)
    pearson, spearman, oov = kv.evaluate_word_pairs(gensim_test_file("wordsim353.tsv"),
                                                    restrict_vocab=restrict_vocab, case_insensitive=True)
    accuracy, sections = kv.evaluate_word_analogies(gensim_test_file("questions-words.txt"),
                                                    restrict_vocab=restrict_vocab, case_insensitive=True)
    total = next(s for s in sections if s["section"] == "Total accuracy")
    return dict(wordsim_spearman=float(spearman[0]), wordsim_oov_percent=float(oov),
                analogy_accuracy=float(accuracy),
                analogy_questions=len(total["correct"]) + len(total["incorrect"]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default="builtin:corpus")
    p.add_argument("--fraction", type=float, default=1.0, help="share of documents kept (stable hash)")
    p.add_argument("--config", default="configs/word2vec.py", help="hyper-parameters (its get_config())")
    p.add_argument("--epochs", type=int, default=0, help="override the config's epochs")
    p.add_argument("--restrict-vocab", type=int, default=30000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--model", choices=["skipgram", "cbow"], default="", help="override the config's model")
    p.add_argument("--skip-gensim", action="store_true")
    p.add_argument("--set", action="append", default=[], help="config override FIELD=VALUE (both trainers)")
    p.add_argument("--json", default="", help="also write the results here")
    args = p.parse_args(argv)

    import importlib.util
    spec = importlib.util.spec_from_file_location("w2v_config", args.config)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    if args.epochs:
        config.epochs = args.epochs
    if args.model:
        config.model = args.model
    for item in args.set:
        key, value = item.split("=", 1)
        config[key] = type(config[key])(value) if not isinstance(config[key], bool) else value == "True"

    from tljax import word2vec
    from tljax.data import sources
    t0 = time.time()
    docs = sources.select_documents(sources.iter_documents(args.source), subsample=args.fraction)
    words, counts, corpus = word2vec.build_vocab(docs, config.min_count)
    print(f"corpus: {corpus.num_docs} documents, {len(corpus.ids):,} in-vocabulary words, vocabulary "
          f"{len(words):,} (min_count {config.min_count}); tokenized in {time.time() - t0:.0f}s", flush=True)
    h = config
    print(f"hyper-parameters: {h.model} dim={h.dim} window={h.window} negative={h.negatives} "
          f"min_count={h.min_count} sample={h.sample} epochs={h.epochs} alpha={h.lr} min_alpha={h.min_lr} "
          f"workers={args.workers}", flush=True)
    results = {}
    eval_order = list(words)
    total_words = len(corpus.ids) * config.epochs

    if not args.skip_gensim:
        from gensim.models import Word2Vec
        vocab = np.asarray(words, dtype=object)
        sentences = []
        for d in range(corpus.num_docs):
            doc = vocab[corpus.ids[corpus.doc_starts[d]:corpus.doc_starts[d + 1]]].tolist()
            sentences.extend(doc[i:i + 10000] for i in range(0, max(len(doc), 1), 10000) if doc)
        model = Word2Vec(vector_size=h.dim, window=h.window, negative=h.negatives, hs=0,
                         sg=int(h.model == "skipgram"), cbow_mean=1,
                         min_count=h.min_count, sample=h.sample, alpha=h.lr, min_alpha=h.min_lr,
                         workers=args.workers, seed=h.seed)
        model.build_vocab(sentences)
        assert set(model.wv.index_to_key) == set(words), "gensim's vocabulary differs"
        eval_order = list(model.wv.index_to_key)  # ties may be ordered differently: use one order
        load = os.getloadavg()[0]
        t = time.time()
        model.train(sentences, total_examples=len(sentences), epochs=h.epochs)
        seconds = time.time() - t
        results["gensim"] = dict(evaluate(model.wv, args.restrict_vocab), seconds=seconds,
                                 words_per_second=total_words / seconds, load_before=load,
                                 load_after=os.getloadavg()[0])
        print(f"gensim: {results['gensim']}", flush=True)
        del model, sentences

    from gensim.models import KeyedVectors
    load = os.getloadavg()[0]
    trained = word2vec.train(None, config, vocab=(words, counts, corpus),
                             log=lambda m: print("  tljax:", m, flush=True))
    kv = KeyedVectors(vector_size=h.dim)
    kv.add_vectors(eval_order, trained.vectors.vectors[[trained.vectors.index[w] for w in eval_order]])
    seconds = trained.summary["train_seconds"]
    results["tljax"] = dict(evaluate(kv, args.restrict_vocab), seconds=seconds,
                            words_per_second=total_words / seconds, load_before=load,
                            load_after=os.getloadavg()[0])
    print(f"tljax: {results['tljax']}", flush=True)

    rows = [("WordSim-353 Spearman", "wordsim_spearman", "{:.3f}"),
            ("Google analogies accuracy", "analogy_accuracy", "{:.3f}"),
            ("training seconds", "seconds", "{:.0f}"),
            ("words/s", "words_per_second", "{:,.0f}"),
            ("1-min load average before / after", None, None)]
    names = list(results)
    print()
    print("| metric | " + " | ".join(names) + (" | tljax / gensim |" if len(names) == 2 else " |"))
    print("|---" * (len(names) + 1 + (len(names) == 2)) + "|")
    for label, key, fmt in rows:
        if key is None:
            cells = [f"{results[n]['load_before']:.1f} / {results[n]['load_after']:.1f}" for n in names]
            print(f"| {label} | " + " | ".join(cells) + (" | |" if len(names) == 2 else " |"))
            continue
        cells = [fmt.format(results[n][key]) for n in names]
        ratio = (f" | {results['tljax'][key] / results['gensim'][key]:.2f}x" if len(names) == 2 else "")
        print(f"| {label} | " + " | ".join(cells) + ratio + " |")
    q = results[names[-1]]
    print(f"\n{q['analogy_questions']} analogy questions within the {args.restrict_vocab} most frequent words; "
          f"WordSim-353 pairs out of vocabulary: {q['wordsim_oov_percent']:.1f}%")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(results=results, args=vars(args),
                                                   config=config.to_dict()), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
