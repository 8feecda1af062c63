"""Train and save the word-level tokenizer of the demo language.

One word = one token; the language's full word list is always in the vocabulary. Encoding a single
sequence prepends [BOS] (EOS is the collator's business: it knows where a response ends). Decoding with
skip_special_tokens=True gives back the space-separated text exactly.

Only `tokenizers`/`transformers` tokenizer code lives here; the language itself is in `world.py`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from lit_rlhf.atomic import atomic_dir
from lit_rlhf.demo.world import VOCABULARY

PAD, UNK, BOS, EOS = "[PAD]", "[UNK]", "[BOS]", "[EOS]"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, UNK, BOS, EOS)
DEFAULT_MODEL_MAX_LENGTH = 64  # longest default demo sequence: 23 tokens with BOS and EOS


def _with_vocabulary(texts: Iterable[str]) -> Iterator[str]:
    # Seeding with the word list guarantees an id for words the sampled texts happen to miss.
    yield " ".join(VOCABULARY)
    yield from texts


def _build_backend(texts: Iterable[str]) -> Tokenizer:
    backend = Tokenizer(models.WordLevel(unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.WordLevelTrainer(
        special_tokens=list(SPECIAL_TOKENS), min_frequency=0, show_progress=False
    )
    backend.train_from_iterator(_with_vocabulary(texts), trainer=trainer)
    bos_id = backend.token_to_id(BOS)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos_id)]
    )
    # The WordPiece decoder joins tokens with one space unless a token starts with `prefix`; a
    # whitespace prefix can never start a whitespace-split token, so every token is space-joined.
    # cleanup=False: English punctuation rules (" ." -> ".") have no business in this language.
    backend.decoder = decoders.WordPiece(prefix=" ", cleanup=False)
    return backend


def train_tokenizer(
    texts: Iterable[str], out_dir: str | Path, model_max_length: int = DEFAULT_MODEL_MAX_LENGTH
) -> PreTrainedTokenizerFast:
    """Train a WordLevel tokenizer on `texts` (plus the whole demo vocabulary) and save it to out_dir.

    Ids: the four special tokens [PAD]=0, [UNK]=1, [BOS]=2, [EOS]=3, then words by decreasing frequency
    (ties alphabetical), so the same texts always give the same ids. Padding is on the right.
    Reload with `AutoTokenizer.from_pretrained(out_dir)`.
    """
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_build_backend(texts),
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        padding_side="right",
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )
    with atomic_dir(out_dir) as staging:  # readers never see half a tokenizer
        tokenizer.save_pretrained(str(staging))
    return tokenizer
