"""Distil a large reranker (teacher) into a small cross-encoder (student).

The four stage scripts at the top of the repository call into this package:
reading and writing records (`jsonl`), data-set formats (`formats`), model and data-set
download (`hub`), the teacher prompt (`prompts`), teacher backends (`teachers`),
resumable scoring (`scoring`), shards and their merge (`shards`), triplet selection
(`triplets`), training helpers (`training`) and ranking metrics (`metrics`).
"""

__version__ = "0.1.0"
