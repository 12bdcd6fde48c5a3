"""An example serving process: the hot-swap client behind a tiny prediction loop.

Run ``python -m eddy.consumers.serve_example --bootstrap HOST:PORT`` next to a running
eddy; it prints the served version and a prediction every second, and swaps to
each new servable model as it is exported. Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys

from eddy.consumers.hotswap import HotSwapClient
from eddy.models.maintain.registry import RegistryError
from eddy.streams.settings import Settings, add_settings_arguments


async def serve(settings: Settings, model: str) -> None:
    client = HotSwapClient(settings, model)
    await client.start()
    try:
        while True:
            try:
                answer = client.predict([{"0": 3.0, "1": 5.0, "2": 1.0}])
                sys.stdout.write(f"serving {model} {client.version}: predict -> {answer[0]}\n")
            except RegistryError as ex:
                sys.stdout.write(f"waiting: {ex}\n")
            sys.stdout.flush()
            await asyncio.sleep(1)
    finally:
        await client.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", help="model stream to serve")
    add_settings_arguments(parser, ["bootstrap", "topic_prefix", "data_dir"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(Settings.load(args), args.model))


if __name__ == "__main__":
    main()
