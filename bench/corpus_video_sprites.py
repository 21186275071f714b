"""How well a corpus CLIP names the emoji of the video world at the size a video frame shows them.

The synthetic videos in corpus mode (`testbed.corpus_videos`) put one emoji picture on a white 64 px
frame; the frame is what the CLIP sees. For each style and picture size (fraction of the frame's side),
the picture is centred on a white frame and classified zero-shot among the world's concept names
("a picture of a {name}"): top-1 and top-5 (chance 1/n and 5/n). This chose `SynthConfig.sprite`.

    python bench/corpus_video_sprites.py --checkpoint runs/demo-corpus/train --concepts 24
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    from common.errors import run_cli

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--checkpoint", type=Path, required=True, help="a corpus CLIP (run dir or checkpoint)"
    )
    parser.add_argument("--concepts", type=int, default=24, help="the first N video concepts (default 24)")
    parser.add_argument("--styles", default="google,openmoji-color,twitter", help="comma-separated styles")
    parser.add_argument("--sizes", default="0.5,0.7,0.75,1.0", help="picture side / frame side")
    parser.add_argument("--frame", type=int, default=64, help="frame side in pixels (the videos' default)")
    ns = parser.parse_args(argv)
    return run_cli(lambda: run(ns))


def run(ns: argparse.Namespace) -> int:
    import numpy as np
    import open_clip
    import torch
    from PIL import Image

    from models import load_clip
    from testbed.corpus import PACKAGES, load_corpus
    from testbed.corpus_data import Split
    from testbed.corpus_videos import CorpusSprites

    torch.set_num_threads(1)
    clip = load_clip(ns.checkpoint)
    sprites = CorpusSprites(load_corpus(require=list(PACKAGES)), Split(), ns.concepts)
    names = list(sprites.names)
    tokenizer = open_clip.get_tokenizer(clip.model_name)
    print(f"{clip.model_name} {clip.identity}: {len(names)} concepts, chance top-1 {100 / len(names):.1f} %")
    print("| style | picture / frame | top-1 (%) | top-5 (%) |\n|---|---|---|---|")
    with torch.no_grad():
        text = clip.model.encode_text(tokenizer([f"a picture of a {n}" for n in names]))
        text = text / text.norm(dim=-1, keepdim=True)
        for style in ns.styles.split(","):
            for fraction in (float(f) for f in ns.sizes.split(",")):
                side = int(round(ns.frame * fraction))
                frames = []
                for name in names:
                    frame = np.full((ns.frame, ns.frame, 3), 255, np.uint8)
                    at = (ns.frame - side) // 2
                    frame[at : at + side, at : at + side] = sprites.sprite(name, style, side)
                    frames.append(clip.preprocess(Image.fromarray(frame)))
                image = clip.model.encode_image(torch.stack(frames))
                scores = (image / image.norm(dim=-1, keepdim=True)) @ text.T
                truth = torch.arange(len(names))
                top1 = (scores.argmax(1) == truth).float().mean().item()
                top5 = (scores.topk(5, dim=1).indices == truth[:, None]).any(1).float().mean().item()
                print(f"| {style} | {fraction:.2f} | {100 * top1:.0f} | {100 * top5:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
