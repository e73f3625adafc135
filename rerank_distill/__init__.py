"""Distil a large reranker (teacher) into a small cross-encoder (student).

The four stage scripts at the top of the repository call into this package:
reading and writing records (`jsonl`), data-set formats (`formats`), model and data-set
download (`hub`), the teacher prompt (`prompts`), teacher backends (`teachers`),
resumable scoring (`scoring`), shards and their merge (`shards`), triplet selection
(`triplets`), training files (`training_data`), losses (`losses`), the trainer (`trainer`)
and its batch samplers (`samplers`), and ranking metrics (`metrics`). generate_logits.py's runs (scoring
in this process or in replicas, joining shards, each run's record) are `teacher_runs`; train.py's own steps
have a module each:

- `training`: its command line: the training flags it adds unless passed, and those it refuses;
- `selection`: checkpoint selection: the held-out queries, MAP or eval loss, and the evaluator;
- `run_folder`: its --output_dir: one run at a time, what an earlier run left there, and resuming.
"""

__version__ = "0.1.0"
