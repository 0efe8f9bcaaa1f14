"""Build evals mode's offline retrieval models: ``rf_ray/assets/tiny-embedder`` (a
sentence-transformers model) and ``rf_ray/assets/tiny-cross-encoder`` (a cross-encoder).

    .venv/bin/python scripts/build_retrieval_assets.py      # a few seconds

Users never run this: the shipped files are what tests and examples load. Both models are a
2-layer BERT of width 32 over the word-level vocabulary ``rf_ray.evals.toy.RETRIEVAL_VOCAB``,
randomly initialised from a fixed seed and never trained (their retrieval quality means
nothing; see ``rf_ray/evals/toy.py``). Run it only when that vocabulary or the shape changes,
and commit the result (a few hundred KB).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    PreTrainedTokenizerFast,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from rf_ray.evals import toy

SHAPE = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 512,
}


def build_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {word: i for i, word in enumerate(toy.RETRIEVAL_VOCAB)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls, sep = vocab["[CLS]"], vocab["[SEP]"]
    core.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )  # fmt: skip
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]", model_max_length=SHAPE["max_position_embeddings"],
    )  # fmt: skip


def config(**extra: object) -> BertConfig:
    return BertConfig(vocab_size=len(toy.RETRIEVAL_VOCAB), **SHAPE, **extra)


def build_embedder(out: Path, tokenizer: PreTrainedTokenizerFast) -> None:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        BertModel(config()).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        encoder = Transformer(tmp, max_seq_length=256)
        pooling = Pooling(encoder.get_embedding_dimension(), "mean")
        SentenceTransformer(modules=[encoder, pooling]).save(str(out))


def build_cross_encoder(out: Path, tokenizer: PreTrainedTokenizerFast) -> None:
    torch.manual_seed(1)
    BertForSequenceClassification(config(num_labels=1)).save_pretrained(out)
    tokenizer.save_pretrained(out)


def card(out: Path, name: str, kind: str) -> None:
    (out / "README.md").write_text(
        f"# rf-ray/{name}\n\nA randomly initialised {kind} for rf-ray's offline evals tests. "
        "Not a useful model: its retrieval quality means nothing.\nRebuild with `python "
        "scripts/build_retrieval_assets.py`.\n\n```json\n"
        + json.dumps({"shape": SHAPE, "vocab_size": len(toy.RETRIEVAL_VOCAB)}, indent=2)
        + "\n```\n"
    )


def main() -> None:
    tokenizer = build_tokenizer()
    for path, build, kind in (
        (Path(toy.TINY_EMBEDDER), build_embedder, "sentence-transformers embedding model"),
        (Path(toy.TINY_CROSS_ENCODER), build_cross_encoder, "cross-encoder"),
    ):
        shutil.rmtree(path, ignore_errors=True)
        build(path, tokenizer)
        card(path, path.name, kind)
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        print(f"{path}: {size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
