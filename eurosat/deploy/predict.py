"""Classify image chips with a trained model: one line per image, the class and its probability.

    python -m eurosat.predict outputs/fp32/2026-12-04/10-15-02/final_model.pt chips/
    python -m eurosat.predict model_int8.onnx a.jpg b.png c.tif --json

MODEL is a .pt file of any precision this project writes (a training run's final_model.pt, the
PTQ report's model_fp16.pt or model_int8.pt, an fp8 or packed N-bit QAT file) or an exported .onnx
(needs the extra: pip install ".[deploy]"). IMAGES are JPEG, PNG or TIFF files of RGB chips, or
folders of them (searched recursively, in name order). A chip that is not 64 x 64 is resized, with
a warning on stderr. Pixels are read as the evaluation reads the dataset (PIL, RGB), so a test chip
gets the class the evaluation gives it.
Exit status: 0 every image classified; 1 some could not be read (each named on stderr, skipped);
2 bad input (the model, no images at all: one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from eurosat.common.cli import one_line_errors
from eurosat.data.loading import CLASS_NAMES, normalize
from eurosat.deploy.qdq import INPUT, OUTPUT

SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
SIZE = 64
BATCH = 256


@dataclass(frozen=True)
class Chip:
    path: Path
    pixels: np.ndarray  # uint8 H x W x 3, 64 x 64 after resizing
    resized_from: tuple[int, int] | None  # (width, height) where it was not 64 x 64


def image_files(paths: list[Path]) -> list[Path]:
    """The files named, and the image files under the folders named (recursively, in name order)."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
        else:
            files.append(path)
    return files


def read_chip(path: Path) -> Chip:
    """An RGB chip as uint8 pixels (PIL, as the dataset is decoded); another size is resized (bilinear)."""
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        rgb = image.convert("RGB")
    resized_from = None
    if rgb.size != (SIZE, SIZE):
        resized_from = rgb.size
        rgb = rgb.resize((SIZE, SIZE), Image.Resampling.BILINEAR)
    return Chip(path, np.asarray(rgb, dtype=np.uint8), resized_from)


def _reason(exc: Exception) -> str:
    """ONNX Runtime's message, first line only (its own are many lines long)."""
    return str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__


class Classifier:
    """Probabilities of a batch of uint8 chips, from a .pt of any precision or an .onnx file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if path.suffix.lower() == ".onnx":
            self._load_onnx(path)
        else:
            self._load_torch(path)

    def _load_onnx(self, path: Path) -> None:
        from eurosat.deploy.export import require_onnx
        from eurosat.deploy.runtime import session

        require_onnx(f"{path}: an .onnx model")
        if not path.is_file():
            raise ValueError(f"{path}: no such file")
        try:
            self.session = session(path)
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types for a bad file
            raise ValueError(f"{path}: not an ONNX model ONNX Runtime can load ({_reason(exc)})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        try:
            self.classes = json.loads(meta["eurosat.classes"]) if "eurosat.classes" in meta else list(CLASS_NAMES)
        except ValueError:
            self.classes = None
        if not (isinstance(self.classes, list) and self.classes and all(isinstance(c, str) for c in self.classes)):
            raise ValueError(f"{path}: its metadata eurosat.classes is not a JSON list of class names")
        self.compute = meta.get("eurosat.compute_cpu", "onnxruntime")
        self._check_graph()

    def _check_graph(self) -> None:
        """The graph takes and gives what `python -m eurosat.export` writes (one float32 input `images`,
        batch x 3 x 64 x 64, and batch x classes logits), or the file is refused before any image runs."""
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        expected = f"{INPUT} tensor(float) [batch, 3, {SIZE}, {SIZE}] -> {OUTPUT} tensor(float) [batch, {len(self.classes)}]"
        found = " -> ".join(", ".join(f"{v.name} {v.type} {v.shape}" for v in vs) or "nothing" for vs in (inputs, outputs))

        def fits(shape: list, want: list) -> bool:  # want None: the batch, which must be dynamic (named)
            return len(shape) == len(want) and all(not isinstance(d, int) if w is None else d in (w, None) or isinstance(d, str)
                                                   for d, w in zip(shape, want))

        if not (len(inputs) == 1 and inputs[0].name == INPUT and inputs[0].type == "tensor(float)"
                and fits(inputs[0].shape, [None, 3, SIZE, SIZE]) and outputs and outputs[0].type == "tensor(float)"
                and fits(outputs[0].shape, [None, len(self.classes)])):
            raise ValueError(f"{self.path}: not a EuroSAT model: the graph is {found}; expected {expected}")

    def _load_torch(self, path: Path) -> None:
        from eurosat.quant.registry import evaluation, load
        from eurosat.train.model import for_inference

        model, config = load(path)
        loaded = evaluation(model, config, torch.device("cpu"))
        self.model, self.dtype = for_inference(loaded.model).eval(), loaded.input_dtype
        self.classes, self.compute = list(CLASS_NAMES), loaded.compute

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        images = normalize(torch.from_numpy(pixels).permute(0, 3, 1, 2)).contiguous()
        if hasattr(self, "session"):
            try:
                logits = torch.from_numpy(np.asarray(self.session.run(None, {INPUT: images.numpy()})[0]))
            except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
                raise ValueError(f"{self.path}: ONNX Runtime could not run the model ({_reason(exc)})") from None
            if tuple(logits.shape) != (len(pixels), len(self.classes)):
                raise ValueError(f"{self.path}: not a EuroSAT model: it gave outputs of shape {list(logits.shape)} "
                                 f"for {len(pixels)} images; expected [{len(pixels)}, {len(self.classes)}]")
        else:
            with torch.no_grad():
                logits = self.model(images.to(self.dtype).contiguous(memory_format=torch.channels_last)).float()
        return torch.softmax(logits.float(), dim=1).numpy()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    doc = __doc__.split("\n\n")
    parser = argparse.ArgumentParser(prog="python -m eurosat.predict", description=doc[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog="\n\n".join(doc[1:]))
    parser.add_argument("model", type=Path, help="a model file: .pt of any precision, or .onnx")
    parser.add_argument("images", type=Path, nargs="+", help="image files (JPEG, PNG, TIFF) or folders of them")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of one line per image")
    return parser.parse_args(argv)


@one_line_errors(ValueError)  # CheckpointError, DeployUnavailable: ValueErrors
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    missing = [str(p) for p in args.images if not p.exists()]
    files = image_files([p for p in args.images if p.exists()])
    if not files and not missing:
        raise ValueError(f"no image files ({', '.join(SUFFIXES)}) in {', '.join(map(str, args.images))}")
    classifier = Classifier(args.model)
    chips, skipped = [], [{"image": m, "error": "no such file or folder"} for m in missing]
    for path in files:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # PIL's notices about odd files; a failure is reported below
                chip = read_chip(path)
        except Exception as exc:  # noqa: BLE001 - PIL raises many kinds for a file that is not an image
            skipped.append({"image": str(path), "error": f"not a readable image ({type(exc).__name__})"})
            continue
        if chip.resized_from:
            print(f"warning: {path}: {chip.resized_from[0]}x{chip.resized_from[1]}, resized to {SIZE}x{SIZE}",
                  file=sys.stderr)
        chips.append(chip)
    for s in skipped:
        print(f"error: {s['image']}: {s['error']}, skipped", file=sys.stderr)
    results = []
    for i in range(0, len(chips), BATCH):
        batch = chips[i:i + BATCH]
        probs = classifier.probabilities(np.stack([c.pixels for c in batch]))
        bad = [chip.path for chip, p in zip(batch, probs) if not np.isfinite(p).all()]
        if bad:  # nothing printed yet: a broken model classifies nothing rather than print nan
            raise ValueError(f"{args.model}: the model computes NaN or Inf for {bad[0]} ({len(bad)} of "
                             f"{len(batch)} images in its batch); nothing classified (a diverged or broken model)")
        for chip, p in zip(batch, probs):
            label = int(p.argmax())
            results.append({"image": str(chip.path), "class": classifier.classes[label], "label": label,
                            "probability": float(p[label]),
                            "resized_from": list(chip.resized_from) if chip.resized_from else None})
    if args.json:
        print(json.dumps({"model": str(args.model), "compute": classifier.compute, "predictions": results,
                          "skipped": skipped}, indent=2))
    else:
        for r in results:
            print(f"{r['image']}: {r['class']} {r['probability']:.3f}")
    return 1 if skipped else 0


if __name__ == "__main__":
    sys.exit(main())
