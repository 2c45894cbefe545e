"""`tuner predict`: top-k labels for images, from a fine-tuned checkpoint or the ImageNet model."""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import TunerError
from ..infer.predict import Predictor
from .render import progress_bar


def cmd_predict(args: argparse.Namespace) -> int:
    if bool(args.checkpoint) == bool(args.imagenet):
        raise TunerError("Give either --checkpoint FILE (your fine-tuned model) or --imagenet (the base model).")
    predictor = Predictor.from_checkpoint(args.checkpoint) if args.checkpoint else Predictor.imagenet(args.weights)
    predictions, unreadable = predictor.predict_readable(args.images, top_k=args.top_k,
                                                         progress=progress_bar("predicting"))
    for prediction in predictions:
        if args.json:
            print(json.dumps(prediction.to_dict()))
        else:
            ranked = ", ".join(f"{label} {prob:.1%}" for label, prob in prediction.top_k)
            print(f"{prediction.image}: {ranked}")
    for reason in unreadable:  # the other files are answered; the exit status says some were not
        print(f"skipped: {reason}", file=sys.stderr)
    return 1 if unreadable else 0
