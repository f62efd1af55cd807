"""The ``tallow`` command: run, chat, pull, models, inspect, bench."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from .sampling import DEFAULTS

__all__ = ["main"]


def _add_sampling(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("-n", "--max-tokens", type=int, default=256, help="most tokens to generate (default 256)")
    g.add_argument("--temperature", "--temp", type=float, default=DEFAULTS["temperature"])
    g.add_argument("--top-k", type=int, default=DEFAULTS["top_k"])
    g.add_argument("--top-p", type=float, default=DEFAULTS["top_p"])
    g.add_argument("--min-p", type=float, default=DEFAULTS["min_p"])
    g.add_argument("--repeat-penalty", type=float, default=DEFAULTS["repeat_penalty"])
    g.add_argument("--repeat-last-n", type=int, default=DEFAULTS["repeat_last_n"])
    g.add_argument("--frequency-penalty", type=float, default=DEFAULTS["frequency_penalty"])
    g.add_argument("--presence-penalty", type=float, default=DEFAULTS["presence_penalty"])
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")


def _add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model", help="path to a .gguf file, a catalog name (see `tallow models`) or hf://owner/repo/file"
    )
    p.add_argument("-t", "--threads", type=int, default=None, help="threads (default: all cores)")
    p.add_argument(
        "-c", "--n-ctx", type=int, default=None, help="context length (default: the model's, up to 4096)"
    )


def _sampling(args: argparse.Namespace) -> dict[str, Any]:
    # The CLI runs one request at a time: it never waits for room (`timeout`); it has no
    # flag for `logit_bias`.
    return {k: getattr(args, k) for k in DEFAULTS if k not in ("timeout", "logit_bias")}


def _load(args: argparse.Namespace) -> Any:
    from .model import Model

    return Model(args.model, n_threads=args.threads, n_ctx=args.n_ctx)


def cmd_run(args: argparse.Namespace) -> int:
    model = _load(args)
    from .errors import TemplateError

    prompt = args.prompt if args.prompt != "-" else sys.stdin.read()
    stream = None
    if not args.raw:
        # Instruction-tuned models answer a question only inside their chat format; use it
        # whenever the model has one, like llama.cpp's CLI does.
        chat = model.chat(system=args.system)
        try:
            chat._prompt(prompt)
            stream = chat.stream(prompt, max_tokens=args.max_tokens, **_sampling(args))
        except TemplateError:
            if args.system is not None:
                raise
    if stream is None:
        stream = model.stream(prompt, max_tokens=args.max_tokens, **_sampling(args))
    for text in stream:
        sys.stdout.write(text)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    model = _load(args)
    chat = model.chat(system=args.system)
    interactive = sys.stdin.isatty()
    if interactive:
        print(
            f"Chatting with {model.info.name or model.path.name}. "
            "/reset clears the conversation, /exit quits; Ctrl-C stops an answer.",
            file=sys.stderr,
        )
    while True:
        try:
            line = input("> " if interactive else "")
        except EOFError:
            return 0
        except KeyboardInterrupt:
            print(file=sys.stderr)
            return 0
        msg = line.strip()
        if not msg:
            continue
        if msg in ("/exit", "/quit"):
            return 0
        if msg == "/reset":
            chat.reset()
            print("(conversation cleared)", file=sys.stderr)
            continue
        try:
            for text in chat.stream(msg, max_tokens=args.max_tokens, **_sampling(args)):
                sys.stdout.write(text)
                sys.stdout.flush()
        except KeyboardInterrupt:
            sys.stdout.write(" [stopped]")
        sys.stdout.write("\n")
        sys.stdout.flush()


def cmd_pull(args: argparse.Namespace) -> int:
    from .catalog import pull

    for name in args.names:
        print(pull(name))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from .catalog import list_models, models_dir

    print(f"catalog (cache: {models_dir()})")
    for entry, path in list_models():
        state = "downloaded" if path else "not downloaded"
        print(f"  {entry.name:<16} {entry.size / 1e6:7.1f} MB  {state:<15} {entry.description}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from ._tallow import inspect

    sys.stdout.write(inspect(args.file))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import time

    from . import bench, build_info

    if args.context_tokens > 0:
        args.n_ctx = max(args.n_ctx or 0, bench.context_room(args.context_tokens, args.gen_tokens))
    t0 = time.perf_counter()
    model = _load(args)
    load_s = time.perf_counter() - t0

    def stream(prompt: str, max_tokens: int) -> Any:
        return model.stream(prompt, max_tokens=max_tokens, temperature=0.0)

    def count(text: str) -> int:
        return len(model.tokenize(text))

    info = build_info()
    print(
        f"{model.info.name} ({model.info.quantization}), {args.threads or info['n_cpus']} threads, "
        f"kernels {info['kernels']}; load {load_s:.2f} s (repack cache: {model.info.repack_cache})"
    )
    runs = []
    for i in range(args.reps):
        m = bench.measure(
            stream,
            count,
            prompt_tokens=args.prompt_tokens,
            gen_tokens=args.gen_tokens,
            context_tokens=args.context_tokens,
            run=i,
        )
        runs.append(m.as_dict())
        context = (
            f"  decode after {m.n_context} tokens {m.context_decode_tok_s:6.1f} tok/s" if m.n_context else ""
        )
        print(
            f"run {i + 1}: prefill {m.prefill_tok_s:7.1f} tok/s ({m.n_prompt} tokens)  "
            f"decode {m.decode_tok_s:6.1f} tok/s ({m.n_decode} tokens)  "
            f"first token {m.ttft_s * 1000:6.1f} ms ({m.n_ttft_prompt}-token prompt){context}"
        )
    med = bench.median_of(runs)
    context = f", decode after {args.context_tokens} tokens {med['context_decode_tok_s']:.1f} tok/s"
    print(
        f"median: prefill {med['prefill_tok_s']:.1f} tok/s, decode {med['decode_tok_s']:.1f} tok/s, "
        f"first token {med['ttft_s'] * 1000:.1f} ms{context if args.context_tokens else ''}"
    )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from .server import create_app, serve
    except ImportError as e:
        raise ImportError(f"{e}; the server needs extra packages: pip install 'tallow[server]'") from None
    from .model import Model

    api_key = args.api_key or os.environ.get("TALLOW_API_KEY") or None
    model = Model(
        args.model,
        n_threads=args.threads,
        n_ctx=args.n_ctx,
        max_sequences=args.max_sequences,
        max_queue=args.max_queue,
    )
    app = create_app(model, model_id=args.model_id, api_key=api_key)
    print(
        f"tallow: serving {app.state.model_id!r} on http://{args.host}:{args.port}/v1 "
        f"({'API key required' if api_key else 'no API key'})",
        file=sys.stderr,
    )
    try:
        serve(app, host=args.host, port=args.port, log_level=args.log_level)
    finally:
        model.close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tallow", description="Run GGUF language models locally on the CPU."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="generate from a prompt, streaming to stdout")
    _add_model(p)
    p.add_argument("prompt", help="the prompt ('-' reads stdin)")
    p.add_argument(
        "--raw",
        action="store_true",
        help="plain completion (default: send the prompt as a chat message if the model has a chat template)",
    )
    p.add_argument("--system", default=None, help="system prompt (chat mode)")
    _add_sampling(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("chat", help="interactive chat (/reset, /exit; Ctrl-C stops the answer)")
    _add_model(p)
    p.add_argument("--system", default=None, help="system prompt")
    _add_sampling(p)
    p.set_defaults(func=cmd_chat, max_tokens=512)

    p = sub.add_parser("pull", help="download catalog models into the cache")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.set_defaults(func=cmd_pull)

    p = sub.add_parser("models", help="list catalog models and whether they are downloaded")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("bench", help="measure prefill and decode speed on this machine (greedy)")
    _add_model(p)
    p.add_argument("--prompt-tokens", type=int, default=512, help="prefill prompt length (default 512)")
    p.add_argument("--gen-tokens", type=int, default=128, help="tokens to decode (default 128)")
    p.add_argument(
        "--context-tokens",
        type=int,
        default=0,
        help="also decode after a prompt of this many tokens (default 0: not measured)",
    )
    p.add_argument("--reps", type=int, default=3, help="repetitions; the median is reported (default 3)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server (needs tallow[server])")
    _add_model(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument(
        "--api-key", default=None, help="require 'Authorization: Bearer KEY' (default: $TALLOW_API_KEY)"
    )
    p.add_argument("--max-sequences", type=int, default=None, help="requests generating at once (default 8)")
    p.add_argument("--max-queue", type=int, default=None, help="requests waiting; more get 429 (default 256)")
    p.add_argument("--model-id", default=None, help="the model's name in the API (default: the file's stem)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("inspect", help="print a GGUF file's metadata and tensor table")
    p.add_argument("file")
    p.set_defaults(func=cmd_inspect)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .errors import TallowError

    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except (TallowError, OSError, ValueError, TypeError, RuntimeError, ImportError) as e:
        print(f"tallow: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
