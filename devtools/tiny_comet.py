"""Build a small COMET model offline: a tiny XLM-R encoder with its own sentencepiece
tokenizer under an unbabel-comet regression head, optionally trained on COMET's own
training format (csv with columns src, mt, ref, score; no `ref` for --referenceless).

    python -m devtools.tiny_comet --output_dir build/comet --text corpus.txt
    python -m devtools.tiny_comet --output_dir build/comet --train_csv scores.csv --epochs 20

The folder is laid out like a downloaded COMET model and is self-contained (it can be moved):

    hparams.yaml            class_identifier + hyper-parameters; `pretrained_model: encoder`
    checkpoints/model.ckpt  Lightning checkpoint (state_dict + hyper_parameters)
    encoder/                XLM-R config and tokenizer the encoder is rebuilt from

`utils.rewards.comet.load_comet` resolves the relative `pretrained_model` against the folder.
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import random
import tempfile
from pathlib import Path

ENCODER_DIR = "encoder"
KINDS = {"regression": "regression_metric", "referenceless": "referenceless_regression_metric"}


def build_encoder(texts: list[str], output_dir: str | Path, *, vocab_size: int = 500, hidden_size: int = 64,
                  layers: int = 2, heads: int = 4, max_position: int = 130) -> Path:
    """Train a unigram sentencepiece model on `texts` and save an XLM-R tokenizer + config."""
    import sentencepiece as spm
    from transformers import XLMRobertaConfig, XLMRobertaTokenizer, XLMRobertaTokenizerFast

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    # XLM-R's tokenizer expects fairseq's layout: spm ids 0-2 are <unk> <s> </s>, shifted by one
    # so that <s>=0 <pad>=1 </s>=2 <unk>=3.
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size, model_type="unigram",
        character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2, num_threads=1,
        hard_vocab_limit=False,
    )
    with tempfile.TemporaryDirectory() as tmp:
        sp_path = os.path.join(tmp, "sentencepiece.bpe.model")
        with open(sp_path, "wb") as f:
            f.write(model.getvalue())
        slow = XLMRobertaTokenizer(vocab_file=sp_path)
        slow.save_pretrained(output_dir)
        XLMRobertaTokenizerFast.from_pretrained(output_dir, from_slow=True).save_pretrained(output_dir)
    tok = XLMRobertaTokenizerFast.from_pretrained(output_dir)
    XLMRobertaConfig(
        vocab_size=len(tok), hidden_size=hidden_size, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=hidden_size * 4, max_position_embeddings=max_position, pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, type_vocab_size=1,
    ).save_pretrained(output_dir)
    return output_dir


def new_metric(encoder_dir: str | Path, kind: str = "regression", *, hidden_sizes: tuple[int, ...] = (64,),
               dropout: float = 0.1):
    """A randomly initialised COMET regression model over the encoder folder."""
    from comet.models import str2model

    return str2model[KINDS[kind]](
        encoder_model="XLM-RoBERTa", pretrained_model=str(encoder_dir), load_pretrained_weights=False,
        local_files_only=True, hidden_sizes=list(hidden_sizes), dropout=dropout, layer="mix", pool="avg",
        nr_frozen_epochs=0.0, keep_embeddings_frozen=False, train_data=[], validation_data=[],
    )


def read_scores_csv(path: str | Path, need_ref: bool) -> list[dict]:
    """COMET's training format: a csv with src, mt, (ref,) score columns."""
    path = Path(path)
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        cols = ["src", "mt", "score"] + (["ref"] if need_ref else [])
        missing = [c for c in cols if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)}; header is {reader.fieldnames}")
        rows = []
        for i, row in enumerate(reader, start=2):
            try:
                score = float(row["score"])
            except (TypeError, ValueError):
                raise ValueError(f"{path}:{i}: score {row['score']!r} is not a number")
            rows.append({c: row[c] for c in cols if c != "score"} | {"score": score})
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows


def train_metric(model, rows: list[dict], *, epochs: int = 10, batch_size: int = 16, lr: float = 1e-3,
                 seed: int = 0, log_every: int = 0) -> list[float]:
    """Plain AdamW on COMET's own loss (MSE to `score`); returns the mean loss per epoch."""
    import torch

    torch.manual_seed(seed)
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    losses = []
    for epoch in range(epochs):
        order = list(range(len(rows)))
        rng.shuffle(order)
        total, n = 0.0, 0
        for i in range(0, len(order), batch_size):
            chunk = [rows[j] for j in order[i:i + batch_size]]
            inputs, target = model.prepare_sample(chunk, stage="fit")
            loss = model.compute_loss(model(**inputs), target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, n = total + loss.item() * len(chunk), n + len(chunk)
        losses.append(total / n)
        if log_every and (epoch + 1) % log_every == 0:
            print(f"[comet] epoch {epoch + 1}: mse {losses[-1]:.4f}", flush=True)
    model.eval()
    return losses


def save_metric(model, output_dir: str | Path) -> Path:
    """Write hparams.yaml + checkpoints/model.ckpt with the encoder path stored relative."""
    import pytorch_lightning as ptl
    import torch
    import yaml

    output_dir = Path(output_dir)
    hparams = dict(model.hparams)
    hparams["pretrained_model"] = ENCODER_DIR
    hparams["class_identifier"] = model_class_id(model)
    (output_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    (output_dir / "hparams.yaml").write_text(yaml.safe_dump(hparams))
    ckpt = {"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "hyper_parameters": {k: v for k, v in hparams.items() if k != "class_identifier"},
            "pytorch-lightning_version": ptl.__version__}
    tmp = output_dir / "checkpoints" / "model.ckpt.tmp"
    torch.save(ckpt, tmp)
    os.replace(tmp, output_dir / "checkpoints" / "model.ckpt")
    return output_dir


def model_class_id(model) -> str:
    from comet.models import str2model

    return next(k for k, v in str2model.items() if type(model) is v)


def build_tiny_comet(output_dir: str | Path, texts: list[str], *, kind: str = "regression",
                     train_rows: list[dict] | None = None, epochs: int = 10, lr: float = 1e-3,
                     batch_size: int = 16, seed: int = 0, vocab_size: int = 500, hidden_size: int = 64,
                     layers: int = 2, log_every: int = 0) -> Path:
    """Encoder + (optionally trained) COMET head in one self-contained folder."""
    import torch

    output_dir = Path(output_dir)
    torch.manual_seed(seed)
    encoder_dir = build_encoder(texts, output_dir / ENCODER_DIR, vocab_size=vocab_size, hidden_size=hidden_size,
                                layers=layers)
    model = new_metric(encoder_dir, kind)
    if train_rows:
        train_metric(model, train_rows, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, log_every=log_every)
    return save_metric(model, output_dir)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output_dir", required=True)
    p.add_argument("--kind", choices=sorted(KINDS), default="regression",
                   help="regression: scores (src, mt, ref); referenceless: scores (src, mt)")
    p.add_argument("--text", help="UTF-8 text, one sentence per line, for the tokenizer (default: the csv's text)")
    p.add_argument("--train_csv", help="COMET training rows: src, mt, ref, score (no ref for referenceless)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--vocab_size", type=int, default=500)
    p.add_argument("--hidden_size", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    if not a.text and not a.train_csv:
        p.error("give --text and/or --train_csv (the tokenizer is trained on their sentences)")
    try:
        rows = read_scores_csv(a.train_csv, need_ref=a.kind == "regression") if a.train_csv else None
        texts = [t for t in Path(a.text).read_text(encoding="utf-8").splitlines() if t.strip()] if a.text else []
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: {e}")
    texts += [r[c] for r in rows or [] for c in ("src", "mt", "ref") if c in r]
    build_tiny_comet(a.output_dir, texts, kind=a.kind, train_rows=rows, epochs=a.epochs, lr=a.lr,
                     batch_size=a.batch_size, seed=a.seed, vocab_size=a.vocab_size, hidden_size=a.hidden_size,
                     layers=a.layers, log_every=1)
    print(f"[comet] {a.kind} model written to {a.output_dir}")


if __name__ == "__main__":
    main()
