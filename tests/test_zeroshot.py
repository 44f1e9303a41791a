"""tljax zeroshot: each label's score is checked against a hand computation of the continuation's
log-probability with transformers' PyTorch model on the unpadded sequence (single- and multi-token
verbalizers, zero- and few-shot), and the accuracy against those hand scores."""
import csv
import json

import pytest
import torch

from tljax.cli import main as cli_main
from conftest import write_keyword_task

PROMPT = "Text: {text}\nLabel:"


def hand_logprob(model, tokenizer, context: str, continuation: str) -> float:
    """Σ_t log p(continuation[t] | context, continuation[<t]) by the PyTorch model on one unpadded row."""
    context_ids = tokenizer(context)["input_ids"]
    continuation_ids = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([context_ids + continuation_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
    return float(sum(logp[len(context_ids) - 1 + t, tok] for t, tok in enumerate(continuation_ids)))


def read_predictions(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("verbalizer", [{"neg": " little", "pos": " great"},  # one token each
                                        {"neg": " not the", "pos": " great and it"}],  # several tokens
                         ids=["single_token", "multi_token"])
@pytest.mark.parametrize("k_shot", [0, 2])
def test_scores_equal_hand_computed_logprobs(tmp_path, tiny_llama, verbalizer, k_shot):
    folder, model, tokenizer = tiny_llama
    write_keyword_task(tmp_path, sizes=(("train", 20), ("test", 6)))
    args = ["zeroshot", "--model", f"hf:{folder}", "--data", f"csv:{tmp_path / 'test.csv'}",
            "--workdir", str(tmp_path / "out"), f"--config.prompt={PROMPT}",
            f"--config.verbalizer={json.dumps(verbalizer)}", "--config.batch_size=4"]
    if k_shot:
        args += [f"--config.k_shot={k_shot}", f"--config.train=csv:{tmp_path / 'train.csv'}"]
    assert cli_main(args) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    rows = read_predictions(tmp_path / "out" / "predictions.csv")
    assert len(rows) == 6 and summary["num_examples"] == 6 and summary["k_shot"] == k_shot
    examples = summary["in_context_examples"]
    assert sorted(e["label"] for e in examples) == (["neg", "pos"] if k_shot else [])
    prefix = "".join(PROMPT.replace("{text}", e["text"]) + verbalizer[e["label"]] + "\n\n" for e in examples)
    correct = 0
    for row in rows:
        context = prefix + PROMPT.replace("{text}", row["text"])
        hand = {label: hand_logprob(model, tokenizer, context, cont) for label, cont in verbalizer.items()}
        for label in verbalizer:
            assert abs(float(row[f"logprob_{label}"]) - hand[label]) < 1e-4, (row, hand)
        assert row["prediction"] == max(hand, key=hand.get)
        correct += row["prediction"] == row["label"]
    assert summary["accuracy"] == pytest.approx(correct / 6)


def test_mean_normalization_divides_by_continuation_tokens(tmp_path, tiny_llama):
    folder, model, tokenizer = tiny_llama
    write_keyword_task(tmp_path, sizes=(("test", 3),))
    verbalizer = {"neg": " not the", "pos": " great and it"}
    assert cli_main(["zeroshot", "--model", f"hf:{folder}", "--data", f"csv:{tmp_path / 'test.csv'}",
                     "--workdir", str(tmp_path / "out"), f"--config.prompt={PROMPT}",
                     f"--config.verbalizer={json.dumps(verbalizer)}", "--config.normalize=mean"]) == 0
    row = read_predictions(tmp_path / "out" / "predictions.csv")[0]
    for label, cont in verbalizer.items():
        n = len(tokenizer(cont, add_special_tokens=False)["input_ids"])
        hand = hand_logprob(model, tokenizer, PROMPT.replace("{text}", row["text"]), cont) / n
        assert abs(float(row[f"logprob_{label}"]) - hand) < 1e-4


def test_zeroshot_errors_are_one_line(tmp_path, tiny_llama, capsys):
    folder, _, _ = tiny_llama
    write_keyword_task(tmp_path, sizes=(("test", 4),))
    base = ["zeroshot", "--model", f"hf:{folder}", "--data", f"csv:{tmp_path / 'test.csv'}",
            "--workdir", str(tmp_path / "out"), f"--config.prompt={PROMPT}"]
    cases = [([f"--config.verbalizer={json.dumps({'neg': ' little'})}"], "at least 2 labels"),
             ([f"--config.verbalizer={json.dumps({'neg': ' a', 'other': ' b'})}"], "'pos'] .* no verbalizer entry"),
             ([f"--config.verbalizer={json.dumps({'neg': ' a', 'pos': ' b'})}", "--config.k_shot=2"],
              "needs config.train"),
             (["--config.verbalizer={oops"], "not JSON"),
             ([f"--config.verbalizer={json.dumps({'neg': ' a', 'pos': ' b'})}", "--config.prompt=no placeholder"],
              "no \\{text\\} placeholder")]
    import re
    for extra, message in cases:
        with pytest.raises(SystemExit) as e:
            cli_main(base + extra)
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and err.startswith("tljax: error:") and re.search(message, err), err
        assert "\n" not in err and not (tmp_path / "out" / "summary.json").exists()


def test_typed_escapes_become_newlines_and_tabs():
    from tljax.zeroshot import unescape
    assert unescape(r"Review: {text}\nSentiment:\t") == "Review: {text}\nSentiment:\t"
    assert unescape(r"a\\nb") == "a\\nb" and unescape("naïve\n") == "naïve\n"
