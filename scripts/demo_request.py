"""One short request to a running `crossattn demo`: wait for it, generate a 4-step image, draw its views, ask
what the image would be without one word.

    python scripts/demo_request.py http://127.0.0.1:7860/      (scripts/check_wheel.sh runs it)
"""

from __future__ import annotations

import sys
import time
import urllib.request

from gradio_client import Client


def main(url: str, timeout_s: float = 180) -> None:
    deadline = time.time() + timeout_s
    while True:  # the demo loads its model before it serves
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    break
        except OSError:
            if time.time() > deadline:
                raise SystemExit(f"demo at {url} did not answer within {timeout_s:.0f} s") from None
            time.sleep(1)
    client = Client(url, verbose=False)
    client.predict(prompt="a red circle left of a blue square", steps=4, words="", expect="", api_name="/generate")
    views = client.predict(words="", expect="", selected=None, last_step=4, step=4, api_name="/render")
    gallery = next(v for v in views if isinstance(v, list) and v and isinstance(v[0], dict) and "caption" in v[0])
    captions = [item["caption"] for item in gallery]
    assert captions == ["a", "red", "circle", "left", "of", "a", "blue", "square"], captions
    picture, answer = client.predict(word="blue square", how="prompt", scale=0, window=":", api_name="/what_if")
    assert picture and "agreement of its attention map with the change" in answer, answer
    print(f"demo answered: {len(captions)} word maps and a counterfactual")


if __name__ == "__main__":
    main(sys.argv[1])
