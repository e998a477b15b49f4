"""The ``headscope`` command line.

``headscope main`` is the README's main job on the bundled SmolLM2 model.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from headscope.errors import HeadscopeError


def _main_job(args: argparse.Namespace) -> int:
    import torch

    from headscope.models import DEFAULT_MODEL, load_model
    from headscope.tasks import Sample

    start = time.perf_counter()
    model = load_model(args.model)
    print(f"loaded {args.model or DEFAULT_MODEL} in {time.perf_counter() - start:.1f} s")
    filler = "".join(
        f"Note {i}: the committee met on a rainy day and discussed the budget for the new library. " for i in range(24)
    )
    half = len(filler) // 2
    context = filler[:half] + "The secret code for the vault is 4821. " + filler[half:]
    sample = Sample(prompt=context + "\nWhat is the secret code for the vault?", answer=" 4821")
    sample = sample.with_chat_template(model.tokenizer)
    tokens = sample.encode(model.tokenizer).input_ids[None]
    with torch.no_grad():
        out = model.generate(tokens, max_new_tokens=14, do_sample=False, verbose=False)
    answer = model.tokenizer.decode(out[0, tokens.shape[1] :], skip_special_tokens=True)
    print(f"needle question over {tokens.shape[1]} tokens; the model answers: {answer.strip()!r}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="headscope", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    main = sub.add_parser("main", help="the main job on the bundled SmolLM2 model")
    main.add_argument("--model", default="smollm2-135m-instruct", help="model name (default: %(default)s)")
    main.set_defaults(run=_main_job)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except HeadscopeError as error:
        print(f"headscope: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
