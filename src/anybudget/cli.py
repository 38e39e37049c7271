"""The ``anybudget`` command.

Sub-command groups live in each technique's ``cli.py`` (``register(subparsers)``). Only the group
being run is imported, so ``anybudget --help`` never loads torch and answers at once.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from anybudget.cli_types import device  # standard library only: --help stays instant

# group -> (module providing register(), one-line help). Extra top-level commands a module adds
# (kv adds `generate`) are routed to it through _ROUTES.
_GROUPS = {
    "kv": ("anybudget.kv.cli", "KV-cache eviction: H2O heavy hitters, StreamingLLM sinks (eval)"),
    "generate": ("anybudget.plan.cli", "generate text from a local model under a KV budget, or from a plan (--plan)"),
    "ssm": ("anybudget.ssm.cli", "polarized Mamba: MQAR training/eval, recency and over-smoothing"),
    "nas": ("anybudget.nas.cli", "TE-NAS training-free architecture search on NAS-Bench-201"),
    "splat": ("anybudget.splat.cli", "LightGaussian: compress 3DGS scenes to a size budget (train, eval)"),
    "elastic": ("anybudget.elastic.cli", "Flextron elastic sub-networks: build, export for a latency/mem/params budget, eval"),
    "prune": ("anybudget.prune.cli", "lottery tickets: IMP with rewinding, masks as data, 2:4 export"),
    "fit": ("anybudget.plan.cli", "plan an elastic sub-network + KV cache for a mem/latency budget, measured"),
}


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``error: argument --x: ... (see `anybudget kv eval --help`)``."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


# User errors: bad inputs, files, decoding, missing packages. Anything else is a runtime failure (1).
_USER_ERRORS = (ValueError, OSError, ImportError, LookupError)


def _one_line(e: BaseException) -> str:
    """The exception as one short line (the first line of its message, at most 300 characters)."""
    text = str(e).strip().splitlines()
    msg = text[0] if text else type(e).__name__
    if isinstance(e, UnicodeDecodeError):
        msg = f"input is not UTF-8 text ({msg})"
    elif type(e).__name__ == "SafetensorError":
        msg = f"a safetensors file is damaged or not a safetensors file ({msg})"
    elif isinstance(e, KeyError):
        msg = f"missing key {msg}"
    return msg if len(msg) <= 300 else msg[:297] + "..."


def _run_command(args: argparse.Namespace, debug: bool) -> int:
    """The error boundary: one ``error:`` line on stderr instead of a traceback (``--debug`` keeps it)."""
    try:
        return int(args.func(args) or 0)
    except SystemExit as e:
        if isinstance(e.code, str) and e.code.startswith("error:"):
            # a command's own one-line refusal: printed here and exit code 2 (a user error), as for
            # argparse; the message stays the exception's text for callers of main() in Python
            print(e.code, file=sys.stderr)
            err = SystemExit(e.code)
            err.code = 2
            raise err from None
        raise
    except KeyboardInterrupt:
        if debug:
            raise
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if debug:
            raise
        user = isinstance(e, _USER_ERRORS) or type(e).__name__ == "SafetensorError"
        hint = "" if user else f" [{type(e).__name__}; rerun with --debug or ANYBUDGET_DEBUG=1 for the traceback]"
        print(f"error: {_one_line(e)}{hint}", file=sys.stderr)
        return 2 if user else 1


def _version() -> str:
    from anybudget import __version__

    return __version__


def _cmd_info(args: argparse.Namespace) -> int:
    from anybudget.measure import device_record

    rec = device_record()
    lines = [
        ("anybudget", _version()),
        ("python", rec["python"]),
        ("torch", rec["torch"] or "not installed"),
        ("transformers", rec["transformers"] or "not installed"),
    ]
    cuda = "no"
    if rec["gpu"]:
        cuda = f"yes: {rec['gpu_count']} x {rec['gpu']} (CUDA {rec['cuda']}, driver {rec['driver']})"
    lines.append(("CUDA", cuda))
    for mod, extra in (("triton", "gpu"), ("gsplat", "splat"), ("plyfile", "splat")):
        try:
            m = importlib.import_module(mod)
            status = f"yes ({getattr(m, '__version__', '?')})"
            if mod == "triton" and not rec["gpu"]:
                status += ", CPU interpreter only (TRITON_INTERPRET=1)"
        except Exception:
            status = f"no (pip install 'anybudget[{extra}]')"
        lines.append((mod, status))
    lines.append(("commit", rec["commit"] or "unknown"))
    width = max(len(k) for k, _ in lines)
    for k, v in lines:
        print(f"{k:<{width}}  {v}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from anybudget.demo import run_demo

    return run_demo(
        model=args.model, budget=args.budget, tokens=args.tokens, device=args.device,
        quiet=args.quiet,
    )


def build_parser(load: str | None = None) -> argparse.ArgumentParser:
    """The parser; ``load`` names the one group whose full sub-commands are registered."""
    p = _Parser(
        prog="anybudget",
        description="Make a trained model meet any device budget (KV memory, latency, size, compute).",
    )
    p.add_argument("--version", action="version", version=f"anybudget {_version()}")
    p.add_argument("--debug", action="store_true",
                   help="show the full traceback on errors (also: env ANYBUDGET_DEBUG=1)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    info = sub.add_parser("info", help="versions, and whether CUDA / triton / gsplat are usable")
    info.set_defaults(func=_cmd_info)

    demo = sub.add_parser(
        "demo",
        help="generate with the embedded reference LM under a KV budget; memory saved and quality",
    )
    demo.add_argument("--model", default=None, help="model folder (default: the embedded reference LM)")
    demo.add_argument("--budget", default="kv=20%", help="KV budget, e.g. kv=20%% or kv=256 (default kv=20%%)")
    demo.add_argument("--tokens", type=int, default=64, help="new tokens to generate (default 64)")
    demo.add_argument("--device", default=None, type=device, help="cpu or cuda (default: cuda if available)")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(func=_cmd_demo)

    if load is not None:
        importlib.import_module(_GROUPS[load][0]).register(sub)
    for name, (_, help_text) in _GROUPS.items():
        if name not in sub.choices:
            # Placeholder so --help lists the group without importing it.
            sub.add_parser(name, help=help_text, add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # --debug is accepted anywhere on the line, not only before the command.
    debug = "--debug" in argv or os.environ.get("ANYBUDGET_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(load=command if command in _GROUPS else None)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if command is None else 2
    return _run_command(args, debug)


if __name__ == "__main__":
    sys.exit(main())
