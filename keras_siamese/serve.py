"""``python -m keras_siamese.serve``: the local TF-Serving-compatible server.

    python -m keras_siamese.serve --model_name siamese --model_base_path saved_models/siamese

    python -m keras_siamese.serve --model_config_file saved_models/models.config

Serves a folder of SavedModel versions over TF Serving's REST API (and gRPC, with
``tensorflow-serving-api``) until interrupted, with Prometheus metrics at
``/monitoring/prometheus/metrics``; the server itself is :mod:`keras_siamese.serving.server`,
and docs/serving.md says where it differs from TF Serving.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

from keras_siamese.serving.server import (
    DEFAULT_LOAD_RETRY_SECONDS, DEFAULT_MAX_LOAD_RETRIES, DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_REQUEST_TIMEOUT_SECONDS, ModelConfig, ModelServer, create_app, create_grpc_server, log,
    read_model_config,
)


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m keras_siamese.serve``, flags named as TF Serving's."""
    parser = argparse.ArgumentParser(
        prog="python -m keras_siamese.serve",
        description="Serve a SavedModel folder over TF Serving's REST API (a local stand-in "
        "for tensorflow_model_server; flags named as its own).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model_name", default="siamese", help="model name in the URLs")
    parser.add_argument(
        "--model_base_path", default="saved_models/siamese", help="folder of numbered versions"
    )
    parser.add_argument(
        "--model_config_file", "--model-config-file", default=None, metavar="FILE",
        help="a ModelServerConfig in text format (TF Serving's models.config) naming one model: "
        "its name, base_path, version policy (latest, specific or all) and version_labels; "
        "it replaces --model_name and --model_base_path. A base_path that does not exist "
        "here (a container's /models/siamese) is read as the folder of the same name beside "
        "the config file (saved_models/siamese beside saved_models/models.config)",
    )
    parser.add_argument(
        "--model_config_file_poll_wait_seconds", "--model-config-file-poll-wait-seconds",
        type=float, default=0.0, metavar="SECONDS",
        help="how often to reread --model_config_file for new version policies and labels "
        "(0: read once)",
    )
    parser.add_argument("--rest_api_port", type=int, default=8501, help="port (0: any free port)")
    parser.add_argument(
        "--port", type=int, default=8500,
        help="gRPC port (0: any free port; -1: no gRPC); needs tensorflow-serving-api",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (0.0.0.0 exposes it to the network)"
    )
    parser.add_argument(
        "--file_system_poll_wait_seconds",
        type=float,
        default=1.0,
        help="how often to look for new versions (0: never)",
    )
    parser.add_argument(
        "--max_request_bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES,
        help="larger request bodies are refused with 413",
    )
    parser.add_argument(
        "--rest_api_timeout_in_ms", type=int, default=int(DEFAULT_REQUEST_TIMEOUT_SECONDS * 1000),
        help="a prediction taking longer is answered with 504 (gRPC: DEADLINE_EXCEEDED, or "
        "at the client's own deadline if shorter); idle or stalled connections are closed "
        "after as long (0: no limit)",
    )
    parser.add_argument(
        "--max_num_load_retries", type=int, default=DEFAULT_MAX_LOAD_RETRIES,
        help="how many times a version that failed to load is tried again (a change to its "
        "files starts over)",
    )
    parser.add_argument(
        "--load_retry_interval_micros", type=int, default=int(DEFAULT_LOAD_RETRY_SECONDS * 1e6),
        help="the wait before the first retry of a failed load, doubled after each failure",
    )
    parser.add_argument("--threads", type=int, default=4, help="request threads")
    return parser


def main(argv: list[str] | None = None) -> None:
    """``python -m keras_siamese.serve``: serve until interrupted."""
    import waitress

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.model_config_file:
        try:
            config = read_model_config(args.model_config_file)
        except ValueError as error:
            raise SystemExit(f"error: --model_config_file: {error}") from None
    else:
        config = ModelConfig(args.model_name, Path(args.model_base_path))
    base_path = config.base_path
    if not base_path.is_dir():
        flag = "the model config's base_path" if args.model_config_file else "--model_base_path"
        raise SystemExit(
            f"error: {flag} {base_path} is not a folder; export a model first "
            "(python -m keras_siamese.export RUN_DIR)"
        )
    timeout = args.rest_api_timeout_in_ms / 1000 if args.rest_api_timeout_in_ms > 0 else None
    server = ModelServer(
        config.name, base_path, args.file_system_poll_wait_seconds,
        max_load_retries=args.max_num_load_retries,
        load_retry_seconds=args.load_retry_interval_micros / 1e6,
        request_timeout=timeout,
        workers=args.threads,
        policy=config.policy,
        versions=config.versions,
        labels=config.labels,
    )
    server.refresh()
    server.start_polling()
    if args.model_config_file:
        server.watch_config(args.model_config_file, args.model_config_file_poll_wait_seconds)
    # waitress reads whole requests before a thread sees them, so a stalled client holds a
    # connection, not a thread; channel_timeout closes such connections.
    channel_timeout = max(1, math.ceil(timeout)) if timeout else 120
    http = waitress.create_server(
        create_app(server, args.max_request_bytes),
        host=args.host,
        port=args.rest_api_port,
        threads=args.threads,
        # Flask's cap answers oversized requests with a JSON 413; waitress's (which spools
        # bodies to disk, not memory) cuts off anything far larger with a plain-text one.
        max_request_body_size=4 * args.max_request_bytes,
        channel_timeout=channel_timeout,
        cleanup_interval=max(1, min(30, channel_timeout // 2)),
    )
    grpc_server = None
    if args.port >= 0:
        try:
            grpc_server, grpc_port = create_grpc_server(
                server, f"{args.host}:{args.port}", args.max_request_bytes, args.threads
            )
            print(f"gRPC at {args.host}:{grpc_port}", flush=True)
        except ImportError:
            log.warning("no gRPC: it needs tensorflow-serving-api (pip install "
                        "'keras-siamese[grpc]'); serving REST only")
        except RuntimeError as error:  # grpc's "Failed to bind"
            http.close()
            raise SystemExit(
                f"error: cannot serve gRPC on {args.host}:{args.port} ({error}); "
                "pass another --port, 0 for any free port, or -1 for none"
            ) from None
    if server.serving is None:
        # Still serving: the poller loads a version as soon as one can be loaded.
        print(f"Warning: no version of {config.name} is available yet "
              f"({server.unavailable_reason()}); predictions answer 503 until one loads",
              flush=True)
    # One line a caller can wait for (and read the port from, with --rest_api_port 0).
    if config.labels:
        print(f"Version labels: {', '.join(f'{k}={v}' for k, v in sorted(config.labels.items()))}",
              flush=True)
    print(f"Serving {config.name} from {base_path} at http://{args.host}:{http.effective_port}",
          flush=True)
    try:
        http.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        http.close()
        if grpc_server is not None:
            grpc_server.stop(grace=1)


if __name__ == "__main__":
    sys.exit(main())
