"""Training pairs: caption word dropout keeps captions usable and repeats for a seed."""

from __future__ import annotations

import random
from pathlib import Path

from medsearch.data.manifest import read_manifest
from medsearch.model.tiny import TinyClipSpec, tiny_image_processor
from medsearch.train.data import PairDataset, drop_words

CAPTION = "Axial CT of the chest shows a 2 cm nodule in the right lower lobe."


def test_given_rate_when_words_dropped_then_half_the_captions_shorten_to_their_own_words() -> None:
    rng = random.Random(0)
    outputs = [drop_words(CAPTION, 0.4, rng) for _ in range(2000)]
    whole = sum(o == CAPTION for o in outputs) / len(outputs)
    assert 0.45 < whole < 0.6  # half untouched (plus the rare subset that keeps every word)
    words = CAPTION.split()
    for output in outputs:
        kept = output.split()
        assert kept, "never empty"
        # a subsequence of the caption's words, in their order
        it = iter(words)
        assert all(w in it for w in kept), output
    shortened = [len(o.split()) for o in outputs if o != CAPTION]
    assert 0.5 * len(words) < sum(shortened) / len(shortened) < 0.7 * len(words)


def test_given_no_rate_or_one_word_when_dropped_then_unchanged() -> None:
    rng = random.Random(0)
    assert all(drop_words(CAPTION, 0.0, rng) == CAPTION for _ in range(50))
    assert all(drop_words("effusion", 0.9, rng) == "effusion" for _ in range(50))


def test_given_dataset_with_dropout_when_read_twice_then_same_captions_per_epoch(
    synth_corpus: Path,
) -> None:
    records = [r for r in read_manifest(synth_corpus) if r.caption][:40]
    processor = tiny_image_processor(TinyClipSpec())

    def captions(epoch: int) -> list[str]:
        dataset = PairDataset(records, processor, caption_dropout=0.5, seed=3)
        dataset.set_epoch(epoch)
        return [dataset[i].caption for i in range(len(records))]

    first = captions(0)
    assert first == captions(0)  # a resumed run sees the same captions
    assert first != captions(1)  # another epoch sees other subsets
    assert sum(c != r.caption for c, r in zip(first, records, strict=True)) >= 10
