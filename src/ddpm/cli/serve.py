"""``ddpm serve``: a local web page to generate, noise, denoise and inpaint with a run (:mod:`ddpm.web`)."""
from __future__ import annotations

import argparse
import socket

from ..sampling.generate import load_run
from ..web.app import WebUnavailable, build_app, check_gradio, launch
from ..web.page import Page
from .args import add_weights
from .errors import UserError

__all__ = ["register", "SERVE_EXAMPLES"]

SERVE_EXAMPLES = """examples:
  ddpm serve runs/digits                        # open http://127.0.0.1:7860 in a browser; Ctrl-C stops it
  ddpm serve runs/digits --port 8000
  ddpm serve runs/digits --port 0               # any free port (the address is printed)
"""


def register(sub) -> None:
    p = sub.add_parser("serve", help="a local web page to watch and steer diffusion (needs ddpm[web])",
                       description="Serve a web page for a run: generate with any sampler and watch x_t and the "
                                   "predicted x_0 live; add noise to a picture at any t and denoise it back (SDEdit); "
                                   "inpaint a painted part (RePaint).  Needs gradio: pip install 'ddpm[web]'.",
                       epilog=SERVE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run folder (or one checkpoint folder inside it)")
    p.add_argument("--port", type=int, default=7860, help="port to listen on; 0 picks a free one (default: 7860)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 opens the page, "
                        "without a password, to the network)")
    add_weights(p)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ... (default: auto)")
    p.set_defaults(func=_run_serve)


def _check_port(host: str, port: int) -> int:
    """Refuse a port in use (or a host this machine does not have) before loading anything; 0 picks a free one."""
    if not 0 <= port <= 65535:
        raise UserError(f"--port must lie in 0..65535, got {port}")
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.bind((host, port))
            return s.getsockname()[1]
    except OSError as e:
        if port and e.errno in (98, 48, 10048):  # EADDRINUSE on Linux, macOS, Windows
            raise UserError(f"--port {port}: already in use on {host}; pass another port, or --port 0 for any "
                            "free one") from None
        raise UserError(f"--host {host} --port {port}: cannot listen there ({e.strerror or e}); pass an address "
                        "of this machine, e.g. 127.0.0.1") from None


def _run_serve(args) -> int:
    try:
        check_gradio()
    except WebUnavailable as e:
        raise UserError(str(e)) from None
    port = _check_port(args.host, args.port)
    run = load_run(args.run, which=args.weights, device=args.device)
    try:
        app = build_app(Page(run, device=args.device))
    except WebUnavailable as e:
        raise UserError(str(e)) from None
    shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    url = f"http://{'[' + shown + ']' if ':' in shown else shown}:{port}"
    print(f"serving {run.checkpoint} at {url} (open it in a browser; Ctrl-C stops the server)", flush=True)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"note: --host {args.host} lets anyone who can reach this machine use the page, with no password",
              flush=True)
    launch(app, args.host, port, block=True)
    return 0
